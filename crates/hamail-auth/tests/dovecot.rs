//! DovecotAuth against a real Dovecot: tests/support/dovecot-auth.sh starts
//! a private instance (installing dovecot-core if missing; needs root), the
//! tests authenticate through its auth client socket, and the instance is
//! stopped when the test ends, pass or fail.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hamail_auth::{DovecotAuth, DovecotVerdict, Mechanism, hash_password};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/dovecot-auth.sh")
}

/// A running private Dovecot; stopped on drop.
struct Dovecot {
    dir: tempfile::TempDir,
    socket: PathBuf,
}

impl Dovecot {
    fn start(users_file: Option<&Path>) -> Dovecot {
        let dir = tempfile::Builder::new()
            .prefix("hamail-dva")
            .tempdir_in("/tmp")
            .unwrap();
        // Dovecot's unprivileged auth process reads DIR/users.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg(script()).arg("start").arg(dir.path());
        if let Some(users) = users_file {
            cmd.env("AUTH_USERS_FILE", users);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "dovecot-auth.sh start failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = stdout
            .lines()
            .find_map(|l| l.strip_prefix("SOCKET "))
            .unwrap_or_else(|| panic!("no SOCKET line in: {stdout}"));
        assert!(stdout.lines().any(|l| l.starts_with("READY ")), "{stdout}");
        assert!(
            stdout.lines().any(|l| l.starts_with("PIDFILE ")),
            "{stdout}"
        );
        let socket = PathBuf::from(socket);
        assert_eq!(socket, dir.path().join("run/auth-client"));
        Dovecot { dir, socket }
    }

    fn client(&self) -> DovecotAuth {
        DovecotAuth::new(&self.socket)
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn auth(
    d: &DovecotAuth,
    mech: Mechanism,
    user: &str,
    pw: &[u8],
    rip: &str,
) -> DovecotVerdict {
    d.authenticate(mech, user, pw, ip(rip), true)
        .await
        .unwrap_or_else(|e| panic!("{mech} {user} from {rip}: {e}"))
}

#[tokio::test]
async fn default_user_right_wrong_and_unknown() {
    let dovecot = Dovecot::start(None);
    let client = dovecot.client();
    let ok = DovecotVerdict::Ok {
        user: "user@example.com".into(),
    };
    assert_eq!(
        auth(
            &client,
            Mechanism::Plain,
            "user@example.com",
            b"secret",
            "192.0.2.1"
        )
        .await,
        ok
    );
    assert_eq!(
        auth(
            &client,
            Mechanism::Login,
            "user@example.com",
            b"secret",
            "192.0.2.2"
        )
        .await,
        ok
    );
    // Failures are delayed by Dovecot (auth_failure_delay); run them at
    // once, each from its own address so its auth penalty stays out.
    let (wrong, wrong_login, unknown) = tokio::join!(
        auth(
            &client,
            Mechanism::Plain,
            "user@example.com",
            b"Secret",
            "192.0.2.10"
        ),
        auth(
            &client,
            Mechanism::Login,
            "user@example.com",
            b"wrong",
            "192.0.2.11"
        ),
        auth(
            &client,
            Mechanism::Plain,
            "nobody@example.com",
            b"secret",
            "192.0.2.12"
        ),
    );
    for verdict in [wrong, wrong_login, unknown] {
        assert!(
            matches!(verdict, DovecotVerdict::Fail { .. }),
            "{verdict:?}"
        );
    }
}

#[tokio::test]
async fn dovecot_verifies_hamails_argon2id_hashes() {
    let users = tempfile::NamedTempFile::new().unwrap();
    let hamail_hash = hash_password(b"correct horse").unwrap();
    std::fs::write(
        users.path(),
        format!(
            "# made by hamail's hash_password\n\
             hamail@example.org:{hamail_hash}\n\
             blf@example.org:{{BLF-CRYPT}}$2y$05$AtFvXyB0DwuD2.s1yS4SGewh98yk5yzd7HB1/Hp59EQs5/qNRWOAG\n"
        ),
    )
    .unwrap();
    // The file must parse as hamail imports it, too.
    let entries =
        hamail_auth::passwd_file::parse(&std::fs::read_to_string(users.path()).unwrap()).unwrap();
    assert_eq!(entries.len(), 2);
    let dovecot = Dovecot::start(Some(users.path()));
    let client = dovecot.client();
    assert_eq!(
        auth(
            &client,
            Mechanism::Plain,
            "hamail@example.org",
            b"correct horse",
            "192.0.2.20"
        )
        .await,
        DovecotVerdict::Ok {
            user: "hamail@example.org".into()
        }
    );
    assert_eq!(
        auth(
            &client,
            Mechanism::Plain,
            "blf@example.org",
            b"secret",
            "192.0.2.21"
        )
        .await,
        DovecotVerdict::Ok {
            user: "blf@example.org".into()
        }
    );
    let wrong = auth(
        &client,
        Mechanism::Plain,
        "hamail@example.org",
        b"correct horsE",
        "192.0.2.22",
    )
    .await;
    assert!(matches!(wrong, DovecotVerdict::Fail { .. }), "{wrong:?}");
}
