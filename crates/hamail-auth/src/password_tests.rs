//! Unit tests of password.rs. The vectors were made with Dovecot 2.3.19.1's
//! `doveadm pw -s SCHEME -p PASSWORD [-r ROUNDS]`, not by the code under test.

use super::*;

const SECRET_ARGON2ID: &str = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$rj8LD205MxfKJ0UIRUv0ZA$9tIJk54YryZqL+TOHSKznKznhMQ6g2nx3BqY+viqMV0";
const SECRET_BLF: &str = "{BLF-CRYPT}$2y$05$AtFvXyB0DwuD2.s1yS4SGewh98yk5yzd7HB1/Hp59EQs5/qNRWOAG";
const SECRET_SHA512_CRYPT: &str = "{SHA512-CRYPT}$6$j/VLdUa0IMh7Hyox$Eg0nwF3j7xKLKxSw7SYuz4bCFb2qgwJQJrALT4Ljpd4k1W5bCsrjn0jSCk2ClivXM.5tNKEbKj1kZEQm4NDXD0";
const SECRET_SHA256_CRYPT: &str =
    "{SHA256-CRYPT}$5$IWIN9mpACuv.V8iS$fBoYuGBXYAQKz9EEn6LU10Uk4cQAyMaPCU58fkFPyl3";
const SECRET_SSHA512: &str = "{SSHA512}0WS/b0dQy33B/pvjJoYPSZakyTodw5rlHUQUcHsA93EynB1Uv6ePXx0tJvB/bqukfKrwUu0I2ne04Lgd8P6bDVz1h0I=";

/// Password "pässwörd 42" (UTF-8), with non-default costs.
const UTF8_PASSWORD: &str = "pässwörd 42";
const UTF8_SHA512_CRYPT_ROUNDS: &str = "{SHA512-CRYPT}$6$rounds=10000$4hLoJWCe09ngHh9a$buDw5QCheqSLj8waSIRmwGadm/0sX6ZBg4N5bopS7tEF1bKaM73Kr2zs6swe.Milnlguc03Ft7timGoRZX4/r0";
const UTF8_SHA256_CRYPT_ROUNDS: &str =
    "{SHA256-CRYPT}$5$rounds=6000$SxjF6O90DA3FE07P$Tt1b9AFd7h6C/aEAYn9sSoxJmRafSO1n39NbbkTC7ID";
const UTF8_BLF_COST6: &str =
    "{BLF-CRYPT}$2y$06$bqHjnPgbzcF9xasK1RslXeN4jnd2WkH.yii55WA5NZI2s1/V3QEyy";
const UTF8_SSHA512: &str = "{SSHA512}VIMRx0pcKY3FhASzWLGA44ykckS4Mf2AabsX19hw64WNxyPaR3Sg5xJ8grdofnnpuDeUZ04eeeyEDBJ1pjRxJG4J5Iw=";

fn matched(stored: &str, password: &[u8]) -> bool {
    match verify(stored, password) {
        Ok(Verified::Match { .. }) => true,
        Ok(Verified::Mismatch) => false,
        Err(e) => panic!("{stored}: {e}"),
    }
}

#[test]
fn dovecot_vectors_verify() {
    for (stored, scheme) in [
        (SECRET_ARGON2ID, Scheme::Argon2id),
        (SECRET_BLF, Scheme::BlfCrypt),
        (SECRET_SHA512_CRYPT, Scheme::Sha512Crypt),
        (SECRET_SHA256_CRYPT, Scheme::Sha256Crypt),
        (SECRET_SSHA512, Scheme::Ssha512),
    ] {
        assert_eq!(check_stored(stored).unwrap(), scheme, "{stored}");
        assert!(matched(stored, b"secret"), "{stored}");
        assert!(!matched(stored, b"Secret"), "{stored}");
        assert!(!matched(stored, b"secret "), "{stored}");
        assert!(!matched(stored, b""), "{stored}");
    }
    for stored in [
        UTF8_SHA512_CRYPT_ROUNDS,
        UTF8_SHA256_CRYPT_ROUNDS,
        UTF8_BLF_COST6,
        UTF8_SSHA512,
    ] {
        assert!(matched(stored, UTF8_PASSWORD.as_bytes()), "{stored}");
        assert!(!matched(stored, b"passwoerd 42"), "{stored}");
    }
}

#[test]
fn bcrypt_prefixes_2a_2b_are_the_same_algorithm() {
    // For an ASCII password shorter than 72 bytes $2a$, $2b$ and $2y$ compute
    // the same hash, so the doveadm vector stays valid under each prefix.
    for prefix in ["$2a$", "$2b$"] {
        let stored = SECRET_BLF.replacen("$2y$", prefix, 1);
        assert_eq!(check_stored(&stored).unwrap(), Scheme::BlfCrypt);
        assert!(matched(&stored, b"secret"));
        assert!(!matched(&stored, b"secreT"));
    }
    let x = SECRET_BLF.replacen("$2y$", "$2x$", 1);
    assert!(matches!(
        check_stored(&x),
        Err(AuthError::Malformed {
            scheme: Scheme::BlfCrypt,
            ..
        })
    ));
}

#[test]
fn rehash_only_for_non_current_hashes() {
    assert_eq!(
        verify(SECRET_ARGON2ID, b"secret").unwrap(),
        Verified::Match { rehash: false }
    );
    for stored in [
        SECRET_BLF,
        SECRET_SHA512_CRYPT,
        SECRET_SHA256_CRYPT,
        SECRET_SSHA512,
    ] {
        assert_eq!(
            verify(stored, b"secret").unwrap(),
            Verified::Match { rehash: true },
            "{stored}"
        );
    }
    // Argon2id with cheaper parameters (made by the argon2 crate's
    // defaults, m=19456,t=2,p=1) verifies but asks for a rehash.
    let cheap = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(19_456, 2, 1, None).unwrap(),
    )
    .hash_password(b"secret")
    .unwrap();
    let cheap = format!("{{ARGON2ID}}{cheap}");
    assert!(cheap.contains("m=19456,t=2,p=1"));
    assert_eq!(
        verify(&cheap, b"secret").unwrap(),
        Verified::Match { rehash: true }
    );
    assert_eq!(verify(&cheap, b"nope").unwrap(), Verified::Mismatch);
}

#[test]
fn hash_password_makes_current_verifiable_salted_hashes() {
    let a = hash_password(b"correct horse").unwrap();
    let b = hash_password(b"correct horse").unwrap();
    assert!(
        a.starts_with("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$"),
        "{a}"
    );
    assert_ne!(a, b, "each hash has its own salt");
    assert_eq!(check_stored(&a).unwrap(), Scheme::Argon2id);
    assert_eq!(
        verify(&a, b"correct horse").unwrap(),
        Verified::Match { rehash: false }
    );
    assert_eq!(verify(&a, b"correct horsE").unwrap(), Verified::Mismatch);
}

#[test]
fn refused_schemes_name_the_scheme_and_why() {
    let plain = check_stored("{PLAIN}secret").unwrap_err().to_string();
    assert_eq!(
        plain,
        "password scheme {PLAIN} is refused: it stores the password itself; hamail stores only hashes"
    );
    for (stored, scheme, why) in [
        ("{CLEAR}secret", "{CLEAR}", "the password itself"),
        ("{plain}secret", "{plain}", "the password itself"),
        ("{PLAIN.b64}c2VjcmV0", "{PLAIN.b64}", "the password itself"),
        (
            "{SHA512}vSsar3708Jvp9Szi2NWZZ02Bqp1qRCFpbcTZPdBhnWgs5WtNZKnvCXdhztmeD2cmW192CF5bDufKRpayrW/isg==",
            "{SHA512}",
            "unsalted",
        ),
        (
            "{MD5-CRYPT}$1$pRjvtAKF$tB9dfm/adJSajq/vlq95d.",
            "{MD5-CRYPT}",
            "MD5",
        ),
        (
            "{CRYPT}$2y$05$rjzGIe23wOiYY.OqsyS0c.2M1rw09jR17G5CkiVAR69pQpwEtl0K6",
            "{CRYPT}",
            "C library",
        ),
        ("{CRAM-MD5}abcdef", "{CRAM-MD5}", "SASL"),
        ("{FOO}bar", "{FOO}", "unknown"),
        ("{SSHA512.HEX}00", "{SSHA512.HEX}", "encoding suffix"),
    ] {
        let err = check_stored(stored).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, AuthError::RefusedScheme { scheme: s, .. } if s == scheme),
            "{stored}: {msg}"
        );
        assert!(msg.contains(why), "{stored}: {msg}");
        // verify refuses the same way: never a Match or Mismatch.
        assert!(verify(stored, b"secret").is_err());
    }
}

#[test]
fn refused_input_is_not_quoted_beyond_the_scheme() {
    let msg = check_stored("{PLAIN}hunter2").unwrap_err().to_string();
    assert!(!msg.contains("hunter2"), "{msg}");
    let msg = check_stored("hunter2").unwrap_err().to_string();
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[test]
fn no_scheme_and_bad_characters() {
    for stored in [
        "",
        "secret",
        "$6$abc$def",
        "{ARGON2ID",
        "{}x",
        "{VERYLONGSCHEMENAMEWHICHNEVERENDSATALL}x",
    ] {
        let err = check_stored(stored).unwrap_err();
        assert!(
            matches!(err, AuthError::NoScheme | AuthError::RefusedScheme { .. }),
            "{stored:?}: {err}"
        );
    }
    let with = |c: &str| format!("{SECRET_SHA512_CRYPT}{c}");
    for (stored, what) in [
        (with(":1000:1000::/home/u::"), "':'"),
        (with("\n"), "a line break"),
        (with("\r"), "a line break"),
        (with("\t"), "a control character"),
        (with("\0"), "a control character"),
        (with("é"), "a non-ASCII character"),
        (with(" "), "a space"),
    ] {
        match check_stored(&stored) {
            Err(AuthError::BadCharacter { what: w, offset }) => {
                assert_eq!(w, what);
                assert_eq!(offset, SECRET_SHA512_CRYPT.len());
            }
            other => panic!("{stored:?}: {other:?}"),
        }
    }
}

#[test]
fn malformed_hashes_are_errors_naming_the_scheme() {
    let cases: Vec<(String, Scheme)> = vec![
        ("{ARGON2ID}".into(), Scheme::Argon2id),
        ("{ARGON2ID}$argon2i$v=19$m=65536,t=3,p=1$rj8LD205MxfKJ0UIRUv0ZA$9tIJk54YryZqL+TOHSKznKznhMQ6g2nx3BqY+viqMV0".into(), Scheme::Argon2id),
        ("{ARGON2ID}$argon2id$v=16$m=65536,t=3,p=1$rj8LD205MxfKJ0UIRUv0ZA$9tIJk54YryZqL+TOHSKznKznhMQ6g2nx3BqY+viqMV0".into(), Scheme::Argon2id),
        ("{ARGON2ID}$argon2id$v=19$m=4194304,t=3,p=1$rj8LD205MxfKJ0UIRUv0ZA$9tIJk54YryZqL+TOHSKznKznhMQ6g2nx3BqY+viqMV0".into(), Scheme::Argon2id),
        ("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$rj8LD205MxfKJ0UIRUv0ZA".into(), Scheme::Argon2id),
        ("{ARGON2ID}not-phc".into(), Scheme::Argon2id),
        (SECRET_BLF.replacen("$05$", "$31$", 1), Scheme::BlfCrypt),
        (SECRET_BLF.replacen("$05$", "$5$", 1), Scheme::BlfCrypt),
        (SECRET_BLF[..SECRET_BLF.len() - 1].to_string(), Scheme::BlfCrypt),
        (SECRET_BLF.replacen("$2y$", "$3y$", 1), Scheme::BlfCrypt),
        (SECRET_BLF.replacen("AtFv", "At!v", 1), Scheme::BlfCrypt),
        (SECRET_SHA512_CRYPT.replacen("$6$", "$5$", 1), Scheme::Sha512Crypt),
        (SECRET_SHA512_CRYPT[..SECRET_SHA512_CRYPT.len() - 1].to_string(), Scheme::Sha512Crypt),
        (SECRET_SHA512_CRYPT.replacen("$6$", "$6$rounds=999$", 1), Scheme::Sha512Crypt),
        (SECRET_SHA512_CRYPT.replacen("$6$", "$6$rounds=99999999$", 1), Scheme::Sha512Crypt),
        (SECRET_SHA512_CRYPT.replacen("$6$", "$6$rounds=x$", 1), Scheme::Sha512Crypt),
        ("{SHA512-CRYPT}$6$$abc".into(), Scheme::Sha512Crypt),
        ("{SHA512-CRYPT}$6$aaaaaaaaaaaaaaaaa$abc".into(), Scheme::Sha512Crypt),
        (SECRET_SHA256_CRYPT.replacen("IWIN", "I*IN", 1), Scheme::Sha256Crypt),
        ("{SSHA512}c2VjcmV0".into(), Scheme::Ssha512),
        ("{SSHA512}not base64!".into(), Scheme::Ssha512),
    ];
    for (stored, scheme) in cases {
        match check_stored(&stored) {
            Err(AuthError::Malformed { scheme: s, reason }) => {
                assert_eq!(s, scheme, "{stored}: {reason}");
                let msg = AuthError::Malformed { scheme: s, reason }.to_string();
                assert!(
                    msg.starts_with(&format!("{scheme} hash is malformed: ")),
                    "{msg}"
                );
            }
            // A space is a bad character before it is bad base64.
            Err(AuthError::BadCharacter { .. }) if scheme == Scheme::Ssha512 => {}
            other => panic!("{stored}: {other:?}"),
        }
        assert!(verify(&stored, b"secret").is_err(), "{stored}");
    }
}

#[test]
fn scheme_display_is_dovecots_prefix() {
    assert_eq!(Scheme::Argon2id.to_string(), "{ARGON2ID}");
    assert_eq!(Scheme::Sha512Crypt.to_string(), "{SHA512-CRYPT}");
    // Scheme names are case-insensitive as in Dovecot.
    let lower = SECRET_SHA256_CRYPT.replacen("{SHA256-CRYPT}", "{sha256-crypt}", 1);
    assert_eq!(check_stored(&lower).unwrap(), Scheme::Sha256Crypt);
    assert!(matched(&lower, b"secret"));
}
