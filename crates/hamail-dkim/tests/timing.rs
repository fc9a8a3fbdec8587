//! How long key generation and signing take: runs with the other tests and
//! checks what it times (each signer signs, with its own selectors), but
//! never asserts on a time (shared machines); read the numbers with
//! `cargo test -p hamail-dkim --release --test timing -- --nocapture`.

use std::time::Instant;

use hamail_dkim::{Signers, SigningKeyRow, generate};
use hamail_types::{DkimAlgorithm, DomainName};

#[test]
fn key_generation_and_signing_times() {
    let d = DomainName::parse("example.com").unwrap();
    let t = Instant::now();
    let rsa = generate(DkimAlgorithm::Rsa, "r1").unwrap();
    println!("RSA-2048 key generation: {:?}", t.elapsed());
    let t = Instant::now();
    let ed = generate(DkimAlgorithm::Ed25519, "e1").unwrap();
    println!("Ed25519 key generation: {:?}", t.elapsed());
    let rows = [&rsa, &ed].map(|k| SigningKeyRow {
        domain: &d,
        selector: &k.selector,
        algorithm: k.algorithm,
        private_key: &k.private_key,
    });
    let t = Instant::now();
    let (both, errors) = Signers::load(rows);
    println!("loading both keys: {:?}", t.elapsed());
    assert!(errors.is_empty(), "{errors:?}");
    let (ed_only, _) = Signers::load([rows[1]]);
    let (rsa_only, _) = Signers::load([rows[0]]);
    let mut message = b"From: A <a@example.com>\r\nTo: b@example.org\r\nSubject: timing\r\n\
        Date: Sun, 6 Dec 2026 03:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n"
        .to_vec();
    for _ in 0..50 {
        message.extend_from_slice(&[b'x'; 78]);
        message.extend_from_slice(b"\r\n");
    }
    let n = 20;
    for (name, s, selectors) in [
        ("RSA-2048", &rsa_only, vec!["r1"]),
        ("Ed25519", &ed_only, vec!["e1"]),
        ("both", &both, vec!["r1", "e1"]),
    ] {
        let t = Instant::now();
        for _ in 0..n {
            let signed = s
                .sign(&message)
                .unwrap()
                .expect("a key of the From domain signs");
            assert_eq!(
                signed.headers.matches("DKIM-Signature:").count(),
                selectors.len()
            );
            // Each is "selector (algorithm)".
            let mut got: Vec<&str> = signed
                .selectors
                .iter()
                .filter_map(|s| s.split_whitespace().next())
                .collect();
            got.sort_unstable();
            let mut want = selectors.clone();
            want.sort_unstable();
            assert_eq!(got, want, "{name}");
        }
        println!(
            "signing a {} byte message, {name}: {:?} per message",
            message.len(),
            t.elapsed() / n
        );
    }
}
