//! The smtpd's STARTTLS certificate: from the configured PEM files, or a
//! self-signed one generated on first start and kept in the data directory
//! (as Postfix operators do with a snakeoil certificate until they have one).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::SmtpError;

fn tls_err(what: String) -> impl Fn(&dyn std::fmt::Display) -> SmtpError {
    move |e| SmtpError::Tls(format!("{what}: {e}"))
}

/// Builds the server side of STARTTLS from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, SmtpError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(format!("cannot read {}", cert.display()))(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(format!("cannot parse {}", cert.display()))(&e))?;
    if chain.is_empty() {
        return Err(SmtpError::Tls(format!(
            "{} holds no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| tls_err(format!("cannot read the private key {}", key.display()))(&e))?;
    let cfg =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("TLS versions".into())(&e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| tls_err(format!("certificate {} and its key", cert.display()))(&e))?;
    Ok(Arc::new(cfg))
}

/// Makes `cert` and `key` (0600) with a self-signed certificate for
/// `hostname` unless both exist already.
pub fn ensure_self_signed(cert: &Path, key: &Path, hostname: &str) -> Result<(), SmtpError> {
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e: std::io::Error| SmtpError::Tls(format!("cannot write {what}: {e}"))
    };
    if let Some(dir) = cert.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let certified = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .map_err(|e| SmtpError::Tls(format!("cannot make a certificate for {hostname}: {e}")))?;
    write_private(key, certified.signing_key.serialize_pem().as_bytes()).map_err(io(key))?;
    std::fs::write(cert, certified.cert.pem()).map_err(io(cert))?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}
