//! Client TLS for delivery: one config that takes any certificate (levels
//! `may` and `encrypt`: encryption against passive listeners, as Postfix
//! does by default) and one that verifies against a CA file or the system
//! roots (`verify`).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::SmtpError;

/// Accepts any certificate, but still checks the handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that takes any certificate but checks the handshake
/// signatures: opportunistic TLS, and load generators (bench/) talking to a
/// server with a self-signed certificate.
pub fn any_certificate_config() -> Result<ClientConfig, SmtpError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SmtpError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth())
}

const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// (any certificate, verified) client configs. `ca_file` empty: the
/// system's roots (a missing system bundle leaves `verify` unable to
/// verify anything, which defers such mail rather than sending it).
pub fn client_configs(ca_file: &str) -> Result<(Arc<ClientConfig>, Arc<ClientConfig>), SmtpError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let any = any_certificate_config()?;
    let mut roots = RootCertStore::empty();
    let path = if ca_file.is_empty() {
        SYSTEM_ROOTS
    } else {
        ca_file
    };
    match CertificateDer::pem_file_iter(Path::new(path)) {
        Ok(certs) => {
            for c in certs.flatten() {
                let _ = roots.add(c);
            }
        }
        Err(e) if !ca_file.is_empty() => {
            return Err(SmtpError::Tls(format!(
                "cannot read smtp_tls_ca_file {ca_file}: {e}"
            )));
        }
        Err(_) => {}
    }
    let verify = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SmtpError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((Arc::new(any), Arc::new(verify)))
}
