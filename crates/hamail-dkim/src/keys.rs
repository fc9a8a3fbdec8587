//! Key generation for `dkim add`. It happens on the node that proposes the
//! command, before the proposal: apply must be deterministic (no
//! randomness), and the node's admin server can check the domain, zone and
//! selector against its applied state before spending the seconds an
//! RSA-2048 key takes. The command then carries the key to every node.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hamail_types::{DkimAlgorithm, DkimKey};
use mail_auth::dkim::generate::DkimKeyPair;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::EncodePublicKey;

use crate::DkimError;

/// RSA modulus size: RFC 8301 asks for at least 1024 and recommends 2048,
/// the largest whose key record fits the common 512-byte UDP answer.
pub const RSA_BITS: usize = 2048;

/// A new key under `selector`. RSA is published as a SubjectPublicKeyInfo
/// (what OpenDKIM publishes and every verifier reads), Ed25519 as its raw
/// 32 bytes (RFC 8463).
pub fn generate(algorithm: DkimAlgorithm, selector: &str) -> Result<DkimKey, DkimError> {
    let fail = |reason: String| DkimError::Generate {
        algorithm: algorithm.to_string(),
        reason,
    };
    let (private_key, public_key) = match algorithm {
        DkimAlgorithm::Rsa => {
            let pair = DkimKeyPair::generate_rsa(RSA_BITS).map_err(|e| fail(e.to_string()))?;
            let (private, pkcs1) = pair.into_inner();
            let spki = rsa::RsaPublicKey::from_pkcs1_der(&pkcs1)
                .map_err(|e| fail(e.to_string()))?
                .to_public_key_der()
                .map_err(|e| fail(e.to_string()))?;
            (private, STANDARD.encode(spki.as_bytes()))
        }
        DkimAlgorithm::Ed25519 => {
            let pair = DkimKeyPair::generate_ed25519().map_err(|e| fail(e.to_string()))?;
            let (private, raw) = pair.into_inner();
            (private, STANDARD.encode(raw))
        }
        other => return Err(fail(format!("{other} keys are not supported"))),
    };
    Ok(DkimKey {
        selector: selector.to_string(),
        algorithm,
        private_key,
        public_key,
    })
}

/// `r20261206` / `e20261206`: the algorithm's letter and the date (UTC)
/// of `unix_secs`, so a later `dkim add` (a rotation) gets a new name.
pub fn dated_selector(algorithm: DkimAlgorithm, unix_secs: u64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(unix_secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{}{:04}{:02}{:02}",
        algorithm.selector_prefix(),
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_selectors() {
        // 2026-12-06 03:00 UTC
        assert_eq!(
            dated_selector(DkimAlgorithm::Rsa, 1_796_526_000),
            "r20261206"
        );
        assert_eq!(
            dated_selector(DkimAlgorithm::Ed25519, 1_796_526_000),
            "e20261206"
        );
    }

    #[test]
    fn generated_keys_validate() {
        let k = generate(DkimAlgorithm::Ed25519, "e1").unwrap();
        k.validate().unwrap();
        assert_eq!(STANDARD.decode(&k.public_key).unwrap().len(), 32);
        assert!(k.txt_rdata().starts_with("\"v=DKIM1; k=ed25519; p="));
    }

    #[test]
    fn rsa_keys_are_published_as_subject_public_key_info() {
        let k = generate(DkimAlgorithm::Rsa, "r1").unwrap();
        k.validate().unwrap();
        // SEQUENCE { SEQUENCE { rsaEncryption, NULL }, BIT STRING }: the
        // base64 every RSA-2048 key record starts with.
        assert!(
            k.public_key.starts_with("MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A"),
            "{}",
            k.public_key
        );
        assert_eq!(k.txt_rdata().matches("\" \"").count(), 1, "two strings");
    }
}
