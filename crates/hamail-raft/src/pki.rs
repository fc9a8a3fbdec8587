//! The cluster's PKI: a CA created by `cluster init`, node certificates that
//! carry the node id (SAN `node-<id>`), and the rustls configurations built
//! on them. Join tokens and the joiner's CA-pinning TLS: `join_token.rs`.
//!
//! Files in `<data_dir>/pki/` (all 0600): `ca.pem` and `ca.key`, the CA
//! that signs; `trusted.pem`, every CA a member certificate may come from
//! (absent: `ca.pem` alone; two CAs during a `cluster rotate-ca`);
//! `node.pem` and `node.key`. Every node holds the signing CA's key, so any
//! surviving site can admit a replacement node; back the directory up with
//! the data.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hamail_types::{CaMaterial, CaState};

pub use crate::join_token::{JoinToken, join_client_config};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("certificate: {0}")]
    Cert(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("invalid join token: {0}")]
    Token(String),
}

fn cert_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Cert(e.to_string())
}

pub(crate) fn tls_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Tls(e.to_string())
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS server name a node's certificate carries.
pub fn node_dns_name(id: u64) -> String {
    format!("node-{id}")
}

/// The node id of a peer certificate (its `node-<id>` SAN).
pub fn peer_node_id(cert: &CertificateDer<'_>) -> Option<u64> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = x.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|gn| match gn {
        x509_parser::extensions::GeneralName::DNSName(s) => {
            s.strip_prefix("node-").and_then(|id| id.parse().ok())
        }
        _ => None,
    })
}

pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

/// SHA-256 (hex) of a certificate's SubjectPublicKeyInfo: what the
/// membership pins for a node. It survives re-signing by another CA (the
/// key stays), and no CA key holder can forge it.
pub fn key_sha256(cert_der: &[u8]) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(hex::encode(Sha256::digest(
        x.tbs_certificate.subject_pki.raw,
    )))
}

/// `key_sha256` of the key a certificate request asks to be certified.
pub fn csr_key_sha256(csr_pem: &str) -> Result<String, PkiError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| PkiError::Cert(format!("certificate request: {e}")))?;
    Ok(hex::encode(Sha256::digest(
        csr.public_key.subject_public_key_info(),
    )))
}

/// `key_sha256` of a PEM certificate.
pub fn pem_key_sha256(cert_pem: &str) -> Result<String, PkiError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(cert_err)?;
    key_sha256(der.as_ref()).ok_or_else(|| PkiError::Cert("unparsable certificate".into()))
}

fn write_private(path: &Path, data: &str) -> Result<(), PkiError> {
    let ferr = |e: std::io::Error| PkiError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(ferr)?;
    f.write_all(data.as_bytes()).map_err(ferr)?;
    f.sync_all().map_err(ferr)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(ferr)?;
    fs::rename(&tmp, path).map_err(ferr)
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| PkiError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// A node's PKI material.
#[derive(Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub node_id: u64,
    /// The signing CA.
    ca_pem: String,
    ca_key_pem: String,
    /// Every trusted CA certificate (PEM), the signing one included.
    trusted: Vec<String>,
    node_pem: String,
    node_key_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .field("node_id", &self.node_id)
            .finish()
    }
}

/// Parameters of a node certificate: the CA, not the requester, picks them.
fn node_params(node_id: u64) -> Result<CertificateParams, PkiError> {
    let name = node_dns_name(node_id);
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, name.clone());
    p.subject_alt_names = vec![SanType::DnsName(name.try_into().map_err(cert_err)?)];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(node_id.into());
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(3650);
    Ok(p)
}

/// The CA as a signer, from its certificate and key.
fn load_issuer(ca_pem: &str, ca_key_pem: &str) -> Result<Issuer<'static, KeyPair>, PkiError> {
    Issuer::from_ca_cert_pem(ca_pem, KeyPair::from_pem(ca_key_pem).map_err(cert_err)?)
        .map_err(cert_err)
}

/// A new self-signed CA named `common_name`.
pub fn generate_ca(common_name: &str) -> Result<CaMaterial, PkiError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, common_name.to_string());
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(3650 * 2);
    let ca = p.self_signed(&key).map_err(cert_err)?;
    Ok(CaMaterial {
        fingerprint: fingerprint(ca.der().as_ref()),
        cert_pem: ca.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// SHA-256 (hex) of a PEM certificate's DER.
pub fn pem_fingerprint(pem: &str) -> Result<String, PkiError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(cert_err)?;
    Ok(fingerprint(der.as_ref()))
}

/// The certificates of a PEM bundle, each as its own PEM text.
fn split_pem(bundle: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut out = Vec::new();
    let mut rest = bundle;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end) = rest[start..].find(END) else {
            break;
        };
        let stop = start + end + END.len();
        out.push(format!("{}\n", &rest[start..stop]));
        rest = &rest[stop..];
    }
    out
}

/// A key pair and certificate request for a joining node.
pub fn make_csr() -> Result<(String, String), PkiError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut p = CertificateParams::new(vec!["hamail-joiner".to_string()]).map_err(cert_err)?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "hamail-joiner");
    let csr = p.serialize_request(&key).map_err(cert_err)?;
    Ok((csr.pem().map_err(cert_err)?, key.serialize_pem()))
}

impl Pki {
    pub fn dir_of(data_dir: &Path) -> PathBuf {
        data_dir.join("pki")
    }

    pub fn exists(data_dir: &Path) -> bool {
        Self::dir_of(data_dir).join("node.pem").exists()
    }

    /// Creates the cluster CA and the first node's certificate.
    pub fn create(data_dir: &Path, cluster_name: &str, node_id: u64) -> Result<Pki, PkiError> {
        let ca = generate_ca(&format!("hamail CA {cluster_name}"))?;
        let (ca_pem, ca_key_pem) = (ca.cert_pem, ca.key_pem);
        let issuer = load_issuer(&ca_pem, &ca_key_pem)?;
        let node_key = KeyPair::generate().map_err(cert_err)?;
        let node_pem = node_params(node_id)?
            .signed_by(&node_key, &issuer)
            .map_err(cert_err)?
            .pem();
        let pki = Pki {
            dir: Self::dir_of(data_dir),
            node_id,
            trusted: vec![ca_pem.clone()],
            ca_pem,
            ca_key_pem,
            node_pem,
            node_key_pem: node_key.serialize_pem(),
        };
        pki.save()?;
        Ok(pki)
    }

    /// Stores what a joining node received. `trusted` lists the CAs other
    /// than `ca_pem` that members' certificates may come from.
    pub fn from_join(
        data_dir: &Path,
        node_id: u64,
        ca_pem: String,
        ca_key_pem: String,
        trusted: Vec<String>,
        node_pem: String,
        node_key_pem: String,
    ) -> Result<Pki, PkiError> {
        let mut all = vec![ca_pem.clone()];
        all.extend(trusted.into_iter().filter(|t| t.trim() != ca_pem.trim()));
        let pki = Pki {
            dir: Self::dir_of(data_dir),
            node_id,
            ca_pem,
            ca_key_pem,
            trusted: all,
            node_pem,
            node_key_pem,
        };
        pki.check()?;
        pki.save()?;
        Ok(pki)
    }

    /// Checks that the material is usable: the node certificate is for
    /// this node and comes from a trusted CA, every CA parses.
    fn check(&self) -> Result<(), PkiError> {
        let got = self.node_cert()?;
        if peer_node_id(&got) != Some(self.node_id) {
            return Err(PkiError::Cert(format!(
                "node.pem is not the certificate of node {}",
                self.node_id
            )));
        }
        for t in &self.trusted {
            CertificateDer::from_pem_slice(t.as_bytes()).map_err(cert_err)?;
        }
        if self.issuer_pem().is_none() {
            return Err(PkiError::Cert(
                "node.pem is not signed by a trusted CA".into(),
            ));
        }
        Ok(())
    }

    /// The node's PKI as the replicated CA state wants it: trusting its
    /// CAs, holding its signing CA, and presenting this node's own key
    /// certified by that CA (re-signed if it is not yet). `None` when this
    /// material is already that.
    pub fn for_ca_state(&self, state: &CaState) -> Result<Option<Pki>, PkiError> {
        let signing = state
            .signing_ca()
            .ok_or_else(|| PkiError::Cert("the replicated CA state names no signing CA".into()))?;
        for ca in &state.trusted {
            let der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).map_err(cert_err)?;
            if fingerprint(der.as_ref()) != ca.fingerprint {
                return Err(PkiError::Cert(format!(
                    "the replicated CA {} does not match its fingerprint",
                    ca.fingerprint
                )));
            }
        }
        let trusted: Vec<String> = state.trusted.iter().map(|c| c.cert_pem.clone()).collect();
        let same_trust = {
            let mut a = self.trusted_fingerprints();
            let mut b: Vec<String> = state
                .trusted
                .iter()
                .map(|c| c.fingerprint.clone())
                .collect();
            a.sort();
            b.sort();
            a == b
        };
        let signed_by_signing =
            self.presenting_fingerprint().as_deref() == Some(&signing.fingerprint);
        if same_trust
            && signed_by_signing
            && self.ca_fingerprint().ok().as_deref() == Some(&signing.fingerprint)
        {
            return Ok(None);
        }
        let node_pem = if signed_by_signing {
            self.node_pem.clone()
        } else {
            let key = KeyPair::from_pem(&self.node_key_pem).map_err(cert_err)?;
            let issuer = load_issuer(&signing.cert_pem, &signing.key_pem)?;
            node_params(self.node_id)?
                .signed_by(&key, &issuer)
                .map_err(cert_err)?
                .pem()
        };
        let next = Pki {
            dir: self.dir.clone(),
            node_id: self.node_id,
            ca_pem: signing.cert_pem.clone(),
            ca_key_pem: signing.key_pem.clone(),
            trusted,
            node_pem,
            node_key_pem: self.node_key_pem.clone(),
        };
        next.check()?;
        Ok(Some(next))
    }

    /// Writes the files. A crash part way leaves a directory that still
    /// loads: `trusted.pem` (a superset during a rotation) is written first,
    /// and a node re-derives the rest from the replicated state at start.
    pub fn save(&self) -> Result<(), PkiError> {
        fs::create_dir_all(&self.dir).map_err(|e| PkiError::File {
            path: self.dir.display().to_string(),
            reason: e.to_string(),
        })?;
        let _ = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700));
        write_private(&self.dir.join("trusted.pem"), &self.trusted.concat())?;
        write_private(&self.dir.join("ca.key"), &self.ca_key_pem)?;
        write_private(&self.dir.join("node.key"), &self.node_key_pem)?;
        write_private(&self.dir.join("ca.pem"), &self.ca_pem)?;
        // node.pem last: its presence marks a complete PKI directory.
        write_private(&self.dir.join("node.pem"), &self.node_pem)
    }

    pub fn load(data_dir: &Path, node_id: u64) -> Result<Pki, PkiError> {
        let dir = Self::dir_of(data_dir);
        let ca_pem = read(&dir.join("ca.pem"))?;
        let trusted_path = dir.join("trusted.pem");
        let mut trusted = vec![ca_pem.clone()];
        if trusted_path.exists() {
            let signing = pem_fingerprint(&ca_pem)?;
            for pem in split_pem(&read(&trusted_path)?) {
                if pem_fingerprint(&pem)? != signing {
                    trusted.push(pem);
                }
            }
        }
        let pki = Pki {
            ca_pem,
            ca_key_pem: read(&dir.join("ca.key"))?,
            trusted,
            node_pem: read(&dir.join("node.pem"))?,
            node_key_pem: read(&dir.join("node.key"))?,
            dir,
            node_id,
        };
        pki.check()?;
        Ok(pki)
    }

    /// The signing CA as replicated material.
    pub fn ca_material(&self) -> Result<CaMaterial, PkiError> {
        Ok(CaMaterial {
            fingerprint: self.ca_fingerprint()?,
            cert_pem: self.ca_pem.clone(),
            key_pem: self.ca_key_pem.clone(),
        })
    }

    /// Every trusted CA certificate (PEM), the signing one first.
    pub fn trusted_pems(&self) -> &[String] {
        &self.trusted
    }

    /// Fingerprints of the trusted CAs.
    pub fn trusted_fingerprints(&self) -> Vec<String> {
        self.trusted
            .iter()
            .filter_map(|t| pem_fingerprint(t).ok())
            .collect()
    }

    /// The trusted CA that signed this node's certificate.
    fn issuer_pem(&self) -> Option<&String> {
        let node = self.node_cert().ok()?;
        let (_, x) = x509_parser::parse_x509_certificate(node.as_ref()).ok()?;
        self.trusted.iter().find(|t| {
            CertificateDer::from_pem_slice(t.as_bytes())
                .ok()
                .and_then(|ca| {
                    let (_, c) = x509_parser::parse_x509_certificate(ca.as_ref()).ok()?;
                    Some(x.verify_signature(Some(c.public_key())).is_ok())
                })
                .unwrap_or(false)
        })
    }

    /// The fingerprint of the CA that signed the certificate this node presents.
    pub fn presenting_fingerprint(&self) -> Option<String> {
        pem_fingerprint(self.issuer_pem()?).ok()
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }

    fn ca_cert(&self) -> Result<CertificateDer<'static>, PkiError> {
        CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(cert_err)
    }

    fn node_cert(&self) -> Result<CertificateDer<'static>, PkiError> {
        CertificateDer::from_pem_slice(self.node_pem.as_bytes()).map_err(cert_err)
    }

    /// This node's pinned key (see `key_sha256`).
    pub fn node_key_sha256(&self) -> Result<String, PkiError> {
        pem_key_sha256(&self.node_pem)
    }

    /// SHA-256 of the CA certificate (DER), hex: what join tokens pin.
    pub fn ca_fingerprint(&self) -> Result<String, PkiError> {
        Ok(fingerprint(self.ca_cert()?.as_ref()))
    }

    /// Signs a joiner's request as node `node_id`.
    pub fn issue(&self, node_id: u64, csr_pem: &str) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Cert(format!("certificate request: {e}")))?;
        let issuer = load_issuer(&self.ca_pem, &self.ca_key_pem)?;
        Ok(node_params(node_id)?
            .signed_by(&csr.public_key, &issuer)
            .map_err(cert_err)?
            .pem())
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, PkiError> {
        let mut r = RootCertStore::empty();
        for t in &self.trusted {
            r.add(CertificateDer::from_pem_slice(t.as_bytes()).map_err(cert_err)?)
                .map_err(tls_err)?;
        }
        Ok(Arc::new(r))
    }

    /// The node certificate, then every trusted CA: a joiner finds the CA
    /// its token pins among them whichever phase a rotation is in.
    fn chain_and_key(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        let key = PrivateKeyDer::from_pem_slice(self.node_key_pem.as_bytes()).map_err(cert_err)?;
        let mut chain = vec![self.node_cert()?];
        for t in &self.trusted {
            chain.push(CertificateDer::from_pem_slice(t.as_bytes()).map_err(cert_err)?);
        }
        Ok((chain, key))
    }

    /// Server side: TLS 1.3; a client certificate from our CA is checked if
    /// sent. Clients without one may only ask to join (the RPC layer enforces it).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, PkiError> {
        let prov = provider();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots()?, prov.clone())
            .allow_unauthenticated()
            .build()
            .map_err(tls_err)?;
        let (chain, key) = self.chain_and_key()?;
        let cfg = ServerConfig::builder_with_provider(prov)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(tls_err)?;
        Ok(Arc::new(cfg))
    }

    /// Client side between members: trusts only our CA, checks the server is
    /// the node we dialled (by `node-<id>`), presents our own certificate.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, PkiError> {
        let prov = provider();
        let verifier = WebPkiServerVerifier::builder_with_provider(self.roots()?, prov.clone())
            .build()
            .map_err(tls_err)?;
        let (chain, key) = self.chain_and_key()?;
        let cfg = ClientConfig::builder_with_provider(prov)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_webpki_verifier(verifier)
            .with_client_auth_cert(chain, key)
            .map_err(tls_err)?;
        Ok(Arc::new(cfg))
    }
}

pub fn server_name(node_id: u64) -> ServerName<'static> {
    ServerName::try_from(node_dns_name(node_id)).unwrap_or(ServerName::IpAddress(
        std::net::IpAddr::from([127, 0, 0, 1]).into(),
    ))
}
