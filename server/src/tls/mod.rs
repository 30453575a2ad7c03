//! Mutual TLS: the server's rustls configuration, the accept loop, and the
//! identity a client certificate proves.
//!
//! - [`accept`]: the TLS accept loop feeding tonic, under the caps of [`crate::admission`]; handshake timeout.
//! - [`conn`]: an established connection, what each request knows of it, the registry a CRL reload closes through.
//! - [`identity`]: [`PeerIdentity`], extracted once per connection.
//! - [`verifier`]: the client-certificate verifier that logs why it refused, naming the certificate,
//!   and checks the newest CRLs.
//! - [`reload`]: the configuration in force, reloaded on file change or SIGHUP.
//!
//! Issuing certificates is not here: see [`crate::certs::authority`].

pub mod accept;
pub mod conn;
pub mod identity;
pub mod reload;
pub mod verifier;

use std::{
    collections::BTreeSet,
    path::Path,
    sync::{Arc, RwLock},
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

pub use conn::{ConnInfo, OpenConnections, TlsConn};
pub use identity::{Identity, PeerIdentity, UnreadableCertificate};
pub use reload::{ServerTls, TlsFiles};

/// Failures building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} from {path}")]
    Read {
        /// What the file holds, e.g. "server key".
        what: &'static str,
        /// The file that could not be read.
        path: String,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// PEM content did not parse.
    #[error("{what} is not valid PEM")]
    Pem {
        /// What the file holds.
        what: &'static str,
        /// The parse failure.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// PEM parsed but held nothing of the expected kind.
    #[error("{0} holds no certificate")]
    Empty(&'static str),
    /// A configured CRL file holds no CRL (empty, or another kind of PEM):
    /// refused, because it would silently turn revocation off.
    #[error(
        "client CRL file {0} holds no CRL (an empty CRL file is not 'nothing revoked': use the CRL the CA wrote)"
    )]
    NoCrl(String),
    /// A CRL that does not parse.
    #[error("client CRL file {path} holds a CRL that does not parse")]
    BadCrl {
        /// The file.
        path: String,
        /// The parse failure.
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
    /// rustls refused the material (key does not match certificate, bad CA, ...).
    #[error("TLS configuration rejected: {what}")]
    Rustls {
        /// Which part was refused, e.g. "server certificate/key".
        what: &'static str,
        /// rustls' reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What CRLs revoke: (issuer name DER, serial) pairs.
pub type Revoked = BTreeSet<(Vec<u8>, Vec<u8>)>;

/// What the newest CRLs loaded revoke. Every configuration a reload builds
/// shares one, so a handshake that began under a configuration a reload has
/// since replaced is still checked against the newest CRLs, and refused
/// with the `certificate_revoked` alert.
#[derive(Debug, Default)]
pub struct RevocationsInForce(RwLock<Arc<Revoked>>);

impl RevocationsInForce {
    /// `revoked` in force.
    pub fn new(revoked: Arc<Revoked>) -> Arc<Self> {
        Arc::new(Self(RwLock::new(revoked)))
    }

    /// What is revoked now.
    pub fn get(&self) -> Arc<Revoked> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, revoked: Arc<Revoked>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = revoked;
    }
}

/// The PEM material a server needs for mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// The server certificate chain, leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The server's private key.
    pub key: Arc<PrivateKeyDer<'static>>,
    /// The CAs whose client certificates are accepted.
    pub client_ca: Vec<CertificateDer<'static>>,
    /// Revocation lists of those CAs.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// What the CRLs revoke: (issuer name DER, serial), for closing open
    /// connections whose certificate a reload revoked.
    pub revoked: Revoked,
    /// Each CRL's file and `nextUpdate` (Unix seconds), when it has one.
    pub crl_next_updates: Vec<(String, Option<i64>)>,
}

impl TlsMaterial {
    /// Parses PEM bytes.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        client_ca_pem: &[u8],
    ) -> Result<Self, TlsError> {
        Ok(Self {
            cert_chain: certs(cert_pem, "server certificate")?,
            key: Arc::new(PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| {
                TlsError::Pem {
                    what: "server key",
                    source,
                }
            })?),
            client_ca: certs(client_ca_pem, "client CA bundle")?,
            crls: Vec::new(),
            revoked: BTreeSet::new(),
            crl_next_updates: Vec::new(),
        })
    }

    /// Adds the CRLs of the file `path` (PEM, one or more); a file with none
    /// is refused.
    pub fn with_crls_pem(mut self, crl_pem: &[u8], path: &str) -> Result<Self, TlsError> {
        let parsed = parse_crls(crl_pem, path)?;
        self.crls.extend(parsed.crls);
        self.revoked.extend(parsed.revoked);
        self.crl_next_updates.extend(
            parsed
                .next_updates
                .into_iter()
                .map(|at| (path.to_owned(), at)),
        );
        Ok(self)
    }

    /// Reads PEM files.
    pub fn from_files(cert: &Path, key: &Path, client_ca: &Path) -> Result<Self, TlsError> {
        Self::from_pem(
            &read(cert, "server certificate")?,
            &read(key, "server key")?,
            &read(client_ca, "client CA bundle")?,
        )
    }
}

/// The CRLs of one file.
#[derive(Debug, Default)]
pub struct ParsedCrls {
    /// Each CRL, DER.
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// What they revoke.
    pub revoked: Revoked,
    /// Each CRL's `nextUpdate` (Unix seconds), when it has one.
    pub next_updates: Vec<Option<i64>>,
}

/// Parses the CRLs (PEM) of the file `path`; a file with none is refused,
/// because it would silently turn revocation off.
pub fn parse_crls(crl_pem: &[u8], path: &str) -> Result<ParsedCrls, TlsError> {
    use x509_parser::prelude::FromDer;
    let mut parsed = ParsedCrls::default();
    for crl in CertificateRevocationListDer::pem_slice_iter(crl_pem) {
        let crl = crl.map_err(|source| TlsError::Pem {
            what: "client CRL",
            source,
        })?;
        let (_, list) = x509_parser::revocation_list::CertificateRevocationList::from_der(&crl)
            .map_err(|source| TlsError::BadCrl {
                path: path.to_owned(),
                source,
            })?;
        let issuer = list.issuer().as_raw().to_vec();
        for revoked in list.iter_revoked_certificates() {
            parsed
                .revoked
                .insert((issuer.clone(), revoked.raw_serial().to_vec()));
        }
        parsed
            .next_updates
            .push(list.next_update().map(|t| t.timestamp()));
        parsed.crls.push(crl);
    }
    if parsed.crls.is_empty() {
        return Err(TlsError::NoCrl(path.to_owned()));
    }
    Ok(parsed)
}

pub(crate) fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(TlsError::Empty(what));
    }
    Ok(certs)
}

/// The one crypto provider this process uses: aws-lc-rs, which the AWS SDK
/// brings anyway.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Installs [`crypto_provider`] as the process default, once; later calls
/// (tests start many servers in one process) are no-ops.
pub fn install_crypto_provider() {
    let _ = CryptoProvider::install_default(rustls::crypto::aws_lc_rs::default_provider());
}

/// The server's rustls configuration: TLS 1.3 preferred, 1.2 allowed (the
/// provider's suites are all AEAD with forward secrecy), ALPN `h2`, and a
/// client certificate chaining to `client_ca`, valid now, with the
/// clientAuth usage and not revoked by any configured CRL, required on
/// every connection.
pub fn server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>, TlsError> {
    let revoked = Arc::new(material.revoked.clone());
    config_in_force(material, revoked.clone(), &RevocationsInForce::new(revoked))
}

/// [`server_config`] whose verifier also checks client certificates against
/// `in_force` once it no longer holds `own`, what `material`'s CRLs revoke.
fn config_in_force(
    material: &TlsMaterial,
    own: Arc<Revoked>,
    in_force: &Arc<RevocationsInForce>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = crypto_provider();
    let mut roots = RootCertStore::empty();
    for ca in &material.client_ca {
        roots.add(ca.clone()).map_err(|e| TlsError::Rustls {
            what: "client CA",
            source: Box::new(e),
        })?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !material.crls.is_empty() {
        // Leaf revocation; the CA is our own and not itself revoked by a CRL of ours.
        builder = builder
            .with_crls(material.crls.clone())
            .only_check_end_entity_revocation();
    }
    let verifier = builder.build().map_err(|e| TlsError::Rustls {
        what: "client verifier",
        source: Box::new(e),
    })?;
    let verifier = Arc::new(verifier::LoggingVerifier::new(
        verifier,
        own,
        in_force.clone(),
    ));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Rustls {
            what: "protocol versions",
            source: Box::new(e),
        })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.cert_chain.clone(), material.key.clone_key())
        .map_err(|e| TlsError::Rustls {
            what: "server certificate/key",
            source: Box::new(e),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: a resumed TLS 1.3 session skips client
    // certificate verification, so a revoked or expired certificate could
    // reconnect on an old ticket. Every connection verifies afresh.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}
