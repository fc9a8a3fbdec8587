//! What a joining node trusts before it has a certificate: the join token
//! (`hamail1.<secret>.<ca-fingerprint>`, of which the cluster keeps only
//! the secret's SHA-256) and the TLS verifier that accepts a member only if
//! its chain holds the CA the token pins.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::pki::{PkiError, provider, tls_err};

/// Client config for a joiner: no certificate yet; the server must present
/// a chain that ends in the CA whose fingerprint the token carries.
pub fn join_client_config(ca_fingerprint: &str) -> Result<Arc<ClientConfig>, PkiError> {
    let prov = provider();
    let pin = hex::decode(ca_fingerprint)
        .map_err(|_| PkiError::Token("the CA fingerprint is not hex".into()))?;
    let verifier = CaPinVerifier {
        pin,
        provider: prov.clone(),
    };
    let cfg = ClientConfig::builder_with_provider(prov)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Accepts a server chain only if it contains the pinned CA certificate and
/// the server's certificate is signed by it (kubeadm's discovery-token-ca-cert-hash).
#[derive(Debug)]
struct CaPinVerifier {
    pin: Vec<u8>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CaPinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.pin.as_slice())
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        verify_server_cert_signed_by_trust_anchor(
            &ParsedCertificate::try_from(end_entity)?,
            &roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A join token: `hamail1.<secret>.<ca-fingerprint>`. The cluster stores only
/// the SHA-256 of the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: String,
    pub ca_fingerprint: String,
}

impl JoinToken {
    pub fn generate(ca_fingerprint: String) -> Result<JoinToken, PkiError> {
        let mut buf = [0u8; 24];
        getrandom::fill(&mut buf).map_err(|e| PkiError::Token(e.to_string()))?;
        Ok(JoinToken {
            secret: hex::encode(buf),
            ca_fingerprint,
        })
    }

    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.secret.as_bytes()))
    }

    pub fn parse(s: &str) -> Result<JoinToken, PkiError> {
        let mut parts = s.trim().split('.');
        let (Some("hamail1"), Some(secret), Some(fp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(PkiError::Token(
                "expected hamail1.<secret>.<ca-sha256>, as printed by `hamail cluster token`"
                    .into(),
            ));
        };
        let hex_ok = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok(secret, 48) || !hex_ok(fp, 64) {
            return Err(PkiError::Token(
                "the secret or the CA fingerprint has the wrong length".into(),
            ));
        }
        Ok(JoinToken {
            secret: secret.to_ascii_lowercase(),
            ca_fingerprint: fp.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hamail1.{}.{}", self.secret, self.ca_fingerprint)
    }
}
