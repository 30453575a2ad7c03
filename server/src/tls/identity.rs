//! What a client certificate says about the caller.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

/// A client certificate that does not parse as X.509.
#[derive(Debug, thiserror::Error)]
#[error("client certificate does not parse")]
pub struct UnreadableCertificate(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>);

/// The identity of a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI SANs, e.g. `spiffe://example.org/billing`.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// The subject distinguished name.
    pub subject: String,
    /// SHA-256 of the certificate DER, base64url: the `x5t#S256` thumbprint of RFC 8705.
    pub x5t_s256: String,
}

impl PeerIdentity {
    /// Reads the identity from a certificate the TLS handshake already verified.
    pub fn from_der(der: &[u8]) -> Result<Self, UnreadableCertificate> {
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(UnreadableCertificate)?;
        let mut uris = Vec::new();
        let mut dns_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        Ok(Self {
            uris,
            dns_names,
            subject: cert.subject().to_string(),
            x5t_s256: URL_SAFE_NO_PAD.encode(digest.as_ref()),
        })
    }

    /// The name callers are known by: the first URI SAN, else the first DNS
    /// SAN, else the subject.
    pub fn name(&self) -> &str {
        self.uris
            .first()
            .or(self.dns_names.first())
            .unwrap_or(&self.subject)
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
