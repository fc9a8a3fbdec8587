//! Signing accepted mail. The keys are loaded from the replicated table
//! once per table version into [`Signers`] (a DER parse per key, never per
//! message); a message is signed with every key of its From domain,
//! relaxed/relaxed, over the headers of [`SIGNED_HEADERS`] it has, From
//! listed twice (oversigned: a second From added later breaks the
//! signature instead of being shown to the reader).

use std::collections::HashMap;
use std::sync::Arc;

use hamail_types::{DkimAlgorithm, DomainName};
use mail_auth::common::crypto::{
    Algorithm, DkimKey as AuthKey, Ed25519Key, RsaKey, Sha256, SigningKey,
};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};

use crate::DkimError;
use crate::from::from_domain;

/// The header fields signed when present, in `h=` order (From first, and
/// once more at the end of the list of present ones).
pub const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// The names to sign for this message: those of [`SIGNED_HEADERS`] it
/// has (a name listed but absent would be signed as empty, which forbids
/// adding it later; only From is meant that way), and From again.
pub fn headers_to_sign(message: &[u8]) -> Vec<&'static str> {
    let mut present = [false; SIGNED_HEADERS.len()];
    for line in message.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii_end();
        if let Some(i) = SIGNED_HEADERS
            .iter()
            .position(|h| name.eq_ignore_ascii_case(h.as_bytes()))
        {
            present[i] = true;
        }
    }
    let mut out: Vec<&'static str> = SIGNED_HEADERS
        .iter()
        .zip(present)
        .filter(|(_, p)| *p)
        .map(|(h, _)| *h)
        .collect();
    if present[0] {
        out.push("From");
    }
    out
}

/// A loaded key shared by every message: mail-auth's signer takes its key
/// by value, and a key is parsed once, not per message.
struct SharedKey(Arc<AuthKey>);

impl SigningKey for SharedKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

struct Loaded {
    selector: String,
    algorithm: DkimAlgorithm,
    key: Arc<AuthKey>,
}

/// One key of the table, as [`Signers::load`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct SigningKeyRow<'a> {
    pub domain: &'a DomainName,
    pub selector: &'a str,
    pub algorithm: DkimAlgorithm,
    pub private_key: &'a [u8],
}

/// The signatures made for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The From domain (`d=`).
    pub domain: DomainName,
    /// `selector (algorithm)` of each signature, for the log.
    pub selectors: Vec<String>,
    /// The DKIM-Signature header fields, CRLF-terminated, to go in front
    /// of the message.
    pub headers: String,
}

/// Every loaded key, by domain.
#[derive(Default)]
pub struct Signers {
    by_domain: HashMap<DomainName, Vec<Loaded>>,
}

impl std::fmt::Debug for Signers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signers")
            .field("domains", &self.by_domain.len())
            .field("keys", &self.keys())
            .finish()
    }
}

fn load_one(row: &SigningKeyRow<'_>) -> Result<AuthKey, DkimError> {
    let fail = |reason: String| DkimError::Load {
        domain: row.domain.to_string(),
        selector: row.selector.to_string(),
        reason,
    };
    match row.algorithm {
        DkimAlgorithm::Rsa => {
            let der = PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(row.private_key.to_vec()));
            RsaKey::<Sha256>::from_key_der(der)
                .map(AuthKey::Rsa)
                .map_err(|e| fail(e.to_string()))
        }
        DkimAlgorithm::Ed25519 => Ed25519Key::from_pkcs8_der(row.private_key)
            .map(AuthKey::Ed25519)
            .map_err(|e| fail(e.to_string())),
        other => Err(fail(format!("{other} keys are not supported"))),
    }
}

impl Signers {
    /// Loads every key. A key that does not load is left out and reported;
    /// the others still sign.
    pub fn load<'a>(
        rows: impl IntoIterator<Item = SigningKeyRow<'a>>,
    ) -> (Signers, Vec<DkimError>) {
        let mut signers = Signers::default();
        let mut errors = Vec::new();
        for row in rows {
            match load_one(&row) {
                Ok(key) => signers
                    .by_domain
                    .entry(row.domain.clone())
                    .or_default()
                    .push(Loaded {
                        selector: row.selector.to_string(),
                        algorithm: row.algorithm,
                        key: Arc::new(key),
                    }),
                Err(e) => errors.push(e),
            }
        }
        // RSA first: the signature every verifier knows sits on top.
        for keys in signers.by_domain.values_mut() {
            keys.sort_by(|a, b| (a.algorithm, &a.selector).cmp(&(b.algorithm, &b.selector)));
        }
        (signers, errors)
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// Keys loaded, all domains together.
    pub fn keys(&self) -> usize {
        self.by_domain.values().map(Vec::len).sum()
    }

    /// Signs `message` with every key of its From domain. `Ok(None)` when
    /// it has no usable From or its domain has no key: not ours to sign.
    pub fn sign(&self, message: &[u8]) -> Result<Option<Signed>, DkimError> {
        if self.by_domain.is_empty() {
            return Ok(None);
        }
        let Some(domain) = from_domain(message) else {
            return Ok(None);
        };
        let Some(keys) = self.by_domain.get(&domain) else {
            return Ok(None);
        };
        let names = headers_to_sign(message);
        let mut headers = String::new();
        let mut selectors = Vec::with_capacity(keys.len());
        for k in keys {
            let signature = DkimSigner::from_key(SharedKey(k.key.clone()))
                .domain(domain.as_str())
                .selector(k.selector.as_str())
                .headers(names.iter().copied())
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed)
                .sign(message)
                .map_err(|e| DkimError::Sign {
                    domain: domain.to_string(),
                    selector: k.selector.clone(),
                    reason: e.to_string(),
                })?;
            headers.push_str(&signature.to_header());
            selectors.push(format!("{} ({})", k.selector, k.algorithm));
        }
        Ok(Some(Signed {
            domain,
            selectors,
            headers,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate;

    #[test]
    fn only_present_headers_and_from_twice() {
        let m = b"Received: x\r\nfrom: a@example.com\r\nSUBJECT: hi\r\n folded\r\nX-Other: y\r\nDate: now\r\n\r\nTo: in body\r\n";
        assert_eq!(headers_to_sign(m), ["From", "Subject", "Date", "From"]);
        assert!(headers_to_sign(b"Subject: x\r\n\r\n") == ["Subject"]);
    }

    #[test]
    fn signs_with_every_key_of_the_from_domain() {
        let d = DomainName::parse("example.com").unwrap();
        let other = DomainName::parse("example.net").unwrap();
        let ed = generate(DkimAlgorithm::Ed25519, "e1").unwrap();
        let ed2 = generate(DkimAlgorithm::Ed25519, "e2").unwrap();
        let rows = [
            SigningKeyRow {
                domain: &d,
                selector: "e1",
                algorithm: ed.algorithm,
                private_key: &ed.private_key,
            },
            SigningKeyRow {
                domain: &other,
                selector: "e2",
                algorithm: ed2.algorithm,
                private_key: &ed2.private_key,
            },
            SigningKeyRow {
                domain: &d,
                selector: "bad",
                algorithm: DkimAlgorithm::Rsa,
                private_key: b"not a key",
            },
        ];
        let (signers, errors) = Signers::load(rows);
        assert_eq!(signers.keys(), 2);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("bad of example.com"));

        let m = b"From: A <a@example.com>\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n";
        let s = signers.sign(m).unwrap().unwrap();
        assert_eq!(s.domain, d);
        assert_eq!(s.selectors, ["e1 (ed25519)"]);
        assert!(s.headers.starts_with("DKIM-Signature:"), "{}", s.headers);
        assert!(s.headers.contains("d=example.com"), "{}", s.headers);
        assert!(s.headers.contains("s=e1"), "{}", s.headers);
        assert!(s.headers.contains("a=ed25519-sha256"), "{}", s.headers);
        assert!(s.headers.contains("c=relaxed/relaxed"), "{}", s.headers);
        let h: String = s.headers.split_whitespace().collect();
        // Bottom up as found, then the From that is not there: oversigned.
        assert!(
            h.to_ascii_lowercase().contains("h=subject:to:from:from;"),
            "{h}"
        );
        // Another domain's mail, or none: not signed.
        assert!(
            signers
                .sign(b"From: x@example.org\r\n\r\nb\r\n")
                .unwrap()
                .is_none()
        );
        assert!(signers.sign(b"Subject: x\r\n\r\nb\r\n").unwrap().is_none());
    }
}
