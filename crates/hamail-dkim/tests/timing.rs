//! How long key generation and signing take (not a timed assertion: run
//! with `cargo test -p hamail-dkim --release --test timing -- --ignored
//! --nocapture` and read the numbers).

use std::time::Instant;

use hamail_dkim::{Signers, SigningKeyRow, generate};
use hamail_types::{DkimAlgorithm, DomainName};

#[test]
#[ignore = "prints timings; run by hand"]
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
    let (both, _) = Signers::load(rows);
    println!("loading both keys: {:?}", t.elapsed());
    let (ed_only, _) = Signers::load([rows[1]]);
    let (rsa_only, _) = Signers::load([rows[0]]);
    let mut message = b"From: A <a@example.com>\r\nTo: b@example.org\r\nSubject: timing\r\n\
        Date: Sun, 6 Dec 2026 03:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n"
        .to_vec();
    for _ in 0..50 {
        message.extend_from_slice(&[b'x'; 78]);
        message.extend_from_slice(b"\r\n");
    }
    let n = 200;
    for (name, s) in [
        ("RSA-2048", &rsa_only),
        ("Ed25519", &ed_only),
        ("both", &both),
    ] {
        let t = Instant::now();
        for _ in 0..n {
            assert!(s.sign(&message).unwrap().is_some());
        }
        println!(
            "signing a {} byte message, {name}: {:?} per message",
            message.len(),
            t.elapsed() / n
        );
    }
}
