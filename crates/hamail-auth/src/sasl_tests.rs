//! Unit tests of sasl.rs.

use super::*;

fn data(line: &[u8]) -> Vec<u8> {
    match decode_base64_line(line).unwrap() {
        Response::Data(d) => d,
        Response::Cancel => panic!("cancel"),
    }
}

#[test]
fn mechanism_names_are_case_insensitive() {
    assert_eq!("PLAIN".parse::<Mechanism>().unwrap(), Mechanism::Plain);
    assert_eq!("plain".parse::<Mechanism>().unwrap(), Mechanism::Plain);
    assert_eq!("LoGiN".parse::<Mechanism>().unwrap(), Mechanism::Login);
    let err = "CRAM-MD5".parse::<Mechanism>().unwrap_err();
    assert_eq!(err, SaslError::UnknownMechanism("CRAM-MD5".into()));
    assert_eq!(
        err.to_string(),
        "unsupported authentication mechanism 'CRAM-MD5'"
    );
    assert_eq!(
        err.smtp_reply(),
        "504 5.5.4 Unrecognized authentication type"
    );
    // Non-printable input is not echoed as is, and is bounded.
    let err = "X\r\nY".repeat(100).parse::<Mechanism>().unwrap_err();
    let SaslError::UnknownMechanism(name) = err else {
        panic!()
    };
    assert_eq!(name.len(), 40);
    assert!(name.starts_with("X??YX??Y"));
    assert_eq!(Mechanism::Login.to_string(), "LOGIN");
}

#[test]
fn decode_lines() {
    assert_eq!(decode_base64_line(b"*").unwrap(), Response::Cancel);
    assert_eq!(decode_base64_line(b"*\r\n").unwrap(), Response::Cancel);
    assert_eq!(data(b"="), b"");
    assert_eq!(data(b""), b"");
    assert_eq!(data(b"\r\n"), b"");
    assert_eq!(data(b"AHVzZXIAcGFzcw=="), b"\0user\0pass");
    assert_eq!(data(b"AHVzZXIAcGFzcw==\r\n"), b"\0user\0pass");
    // Padding optional.
    assert_eq!(data(b"AHVzZXIAcGFzcw"), b"\0user\0pass");
    assert_eq!(data(LOGIN_USERNAME_CHALLENGE.as_bytes()), b"Username:");
    assert_eq!(data(LOGIN_PASSWORD_CHALLENGE.as_bytes()), b"Password:");
    for bad in [
        &b"AHVzZXIAcGFzcw=!"[..],
        b"a",
        b"AHVz ZXIA",
        b"**",
        b"==",
        b"AHVzZXIAcGFzcw==\r\nx",
        b"\xff\xfe",
    ] {
        assert_eq!(
            decode_base64_line(bad),
            Err(SaslError::Malformed),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(
        SaslError::Malformed.smtp_reply(),
        "501 5.5.2 Cannot decode the AUTH response"
    );
    assert_eq!(
        SaslError::Cancelled.smtp_reply(),
        "501 5.7.0 Authentication aborted"
    );
}

#[test]
fn length_limit_is_12288_decoded_octets() {
    use base64::engine::general_purpose::STANDARD;
    let at_limit = STANDARD.encode(vec![b'a'; MAX_RESPONSE_LEN]);
    assert_eq!(at_limit.len(), 16_384);
    assert_eq!(data(at_limit.as_bytes()).len(), MAX_RESPONSE_LEN);
    let over = STANDARD.encode(vec![b'a'; MAX_RESPONSE_LEN + 1]);
    assert_eq!(decode_base64_line(over.as_bytes()), Err(SaslError::TooLong));
    // Checked before decoding: garbage that long is TooLong, not Malformed.
    assert_eq!(decode_base64_line(&[b'!'; 20_000]), Err(SaslError::TooLong));
    assert_eq!(
        SaslError::TooLong.smtp_reply(),
        "500 5.5.6 Authentication exchange line is too long"
    );
}

#[test]
fn plain_messages() {
    let c = parse_plain(b"\0user@example.com\0secret").unwrap();
    assert_eq!(c.user, "user@example.com");
    assert_eq!(c.password, b"secret");
    // authzid equal to authcid is fine.
    let c = parse_plain(b"u@x.org\0u@x.org\0p w").unwrap();
    assert_eq!(
        (c.user.as_str(), c.password.as_slice()),
        ("u@x.org", &b"p w"[..])
    );
    // Non-UTF-8 password octets are kept as they are.
    assert_eq!(parse_plain(b"\0u\0\xff\xfe").unwrap().password, b"\xff\xfe");
    assert_eq!(
        parse_plain(b"admin\0user\0secret"),
        Err(SaslError::AuthzidMismatch)
    );
    assert_eq!(
        SaslError::AuthzidMismatch.smtp_reply(),
        "535 5.7.8 Authentication credentials invalid"
    );
    for (bad, reason) in [
        (&b""[..], "expected authzid NUL authcid NUL password"),
        (b"user\0secret", "expected authzid NUL authcid NUL password"),
        (
            b"\0user\0sec\0ret",
            "expected authzid NUL authcid NUL password",
        ),
        (b"\0\0secret", "empty user name"),
        (b"\0user\0", "empty password"),
        (b"\0us\xffer\0secret", "user name is not UTF-8"),
        (
            b"\0us\ter\0secret",
            "user name contains a control character",
        ),
    ] {
        let err = parse_plain(bad).unwrap_err();
        assert_eq!(
            err,
            SaslError::Invalid {
                mechanism: Mechanism::Plain,
                reason
            },
            "{bad:?}"
        );
        assert_eq!(
            err.smtp_reply(),
            "535 5.7.8 Authentication credentials invalid"
        );
        assert!(!err.to_string().contains("secret"));
    }
}

#[test]
fn login_steps() {
    assert_eq!(
        parse_login_user(b"user@example.com").unwrap(),
        "user@example.com"
    );
    assert!(matches!(
        parse_login_user(b""),
        Err(SaslError::Invalid {
            mechanism: Mechanism::Login,
            ..
        })
    ));
    assert!(parse_login_user(b"a\0b").is_err());
    let c = login_credentials("u".into(), b"pw".to_vec()).unwrap();
    assert_eq!(c.password, b"pw");
    assert_eq!(
        login_credentials("u".into(), Vec::new()),
        Err(SaslError::Invalid {
            mechanism: Mechanism::Login,
            reason: "empty password"
        })
    );
}

#[test]
fn debug_never_shows_the_password() {
    let c = parse_plain(b"\0user\0hunter2").unwrap();
    let shown = format!("{c:?}");
    assert!(shown.contains("user"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let r = decode_base64_line(b"AHVzZXIAaHVudGVyMg==").unwrap();
    let shown = format!("{r:?}");
    assert!(
        !shown.contains("hunter2") && !shown.contains("104"),
        "{shown}"
    );
}
