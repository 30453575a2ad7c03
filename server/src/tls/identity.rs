//! What a client certificate says about the caller.

use std::{fmt, sync::Arc};

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
    /// The issuer's distinguished name (DER) and the serial number: what a CRL revokes.
    pub issuer_and_serial: (Vec<u8>, Vec<u8>),
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// [`name`](Self::name) with its kind, worked out once.
    identity: Identity,
    /// [`identity`](Self::identity) as logs and per-caller maps key it.
    identity_text: String,
}

impl PeerIdentity {
    /// Reads the identity from a certificate the TLS handshake already verified.
    pub fn from_der(der: &[u8]) -> Result<Self, UnreadableCertificate> {
        Self::with_digest(
            der,
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der),
        )
    }

    fn with_digest(
        der: &[u8],
        digest: aws_lc_rs::digest::Digest,
    ) -> Result<Self, UnreadableCertificate> {
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
        let subject = cert.subject().to_string();
        let identity = match (uris.first(), dns_names.first()) {
            (Some(uri), _) => Identity::Uri(uri.clone()),
            (None, Some(dns)) => Identity::Dns(normalize_dns(dns)),
            (None, None) => Identity::Subject(subject.clone()),
        };
        Ok(Self {
            uris,
            dns_names,
            subject,
            x5t_s256: URL_SAFE_NO_PAD.encode(digest.as_ref()),
            issuer_and_serial: (cert.issuer().as_raw().to_vec(), cert.raw_serial().to_vec()),
            not_after: cert.validity().not_after.timestamp(),
            identity_text: identity.to_string(),
            identity,
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

    /// [`name`](Self::name) with its kind, for allow-lists and bindings.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// [`identity`](Self::identity) as text (escaped): the key of the
    /// per-caller rate limit and refusal budget.
    pub fn identity_text(&self) -> &str {
        &self.identity_text
    }
}

/// Identities of the client certificates seen lately, by the SHA-256 of
/// their DER: a service reconnecting with the same certificate is not
/// parsed again. Only certificates the handshake verified are looked up, so
/// outsiders cannot fill it; at [`IdentityCache::CAPACITY`] entries it
/// starts over.
pub struct IdentityCache(quick_cache::sync::Cache<[u8; 32], Arc<PeerIdentity>>);

impl Default for IdentityCache {
    fn default() -> Self {
        Self(quick_cache::sync::Cache::new(Self::CAPACITY))
    }
}

impl IdentityCache {
    /// Certificates remembered at most.
    pub const CAPACITY: usize = 4096;

    /// The identity of `der`, parsed once per certificate.
    pub fn identity_of(&self, der: &[u8]) -> Result<Arc<PeerIdentity>, UnreadableCertificate> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let key: [u8; 32] = digest.as_ref().try_into().expect("SHA-256 is 32 bytes");
        if let Some(known) = self.0.get(&key) {
            return Ok(known);
        }
        let peer = Arc::new(PeerIdentity::with_digest(der, digest)?);
        self.0.insert(key, peer.clone());
        Ok(peer)
    }
}

/// DNS names compare case-insensitively and without a trailing dot.
fn normalize_dns(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A certificate identity with its kind: a URI SAN and a DNS SAN that spell
/// the same text are different identities.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identity {
    /// A URI SAN, e.g. `spiffe://example.org/billing`.
    Uri(String),
    /// A DNS SAN.
    Dns(String),
    /// The subject distinguished name (a certificate with neither SAN).
    Subject(String),
}

impl Identity {
    /// Reads a configured identity: `uri:VALUE`, `dns:VALUE` or
    /// `subject:VALUE`; a bare value is a URI when it contains `://`, else a
    /// DNS name.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let identity = if let Some(uri) = text.strip_prefix("uri:") {
            Identity::Uri(uri.to_owned())
        } else if let Some(dns) = text.strip_prefix("dns:") {
            Identity::Dns(normalize_dns(dns))
        } else if let Some(subject) = text.strip_prefix("subject:") {
            Identity::Subject(subject.to_owned())
        } else if text.contains("://") {
            Identity::Uri(text.to_owned())
        } else {
            Identity::Dns(normalize_dns(text))
        };
        match &identity {
            Identity::Uri(v) | Identity::Dns(v) | Identity::Subject(v) if v.is_empty() => {
                Err(format!("identity {text:?} is empty"))
            }
            Identity::Dns(v) if v.contains("://") => Err(format!(
                "identity {text:?}: a DNS name cannot contain '://' (write uri:... for a URI SAN)"
            )),
            _ => Ok(identity),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Uri(v) | Identity::Dns(v) | Identity::Subject(v) => {
                f.write_str(&crate::telemetry::escape(v))
            }
        }
    }
}

/// The name, with control characters escaped: it is the peer's choice.
impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::telemetry::Escaped(self.name(), usize::MAX).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(dns_name: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec![dns_name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn the_cache_parses_a_certificate_once_and_tells_certificates_apart() {
        let cache = IdentityCache::default();
        let (a, b) = (certificate("a.example"), certificate("b.example"));
        let first = cache.identity_of(&a).unwrap();
        assert!(Arc::ptr_eq(&first, &cache.identity_of(&a).unwrap()));
        assert_eq!(*first, PeerIdentity::from_der(&a).unwrap());
        let other = cache.identity_of(&b).unwrap();
        assert_eq!(other.identity(), &Identity::Dns("b.example".into()));
        assert_eq!(other.identity_text(), "b.example");
        assert!(cache.identity_of(b"not a certificate").is_err());
    }

    #[test]
    fn configured_identities_name_their_kind() {
        assert_eq!(
            Identity::parse("spiffe://a/b"),
            Ok(Identity::Uri("spiffe://a/b".into()))
        );
        assert_eq!(
            Identity::parse("uri:spiffe://a/b"),
            Ok(Identity::Uri("spiffe://a/b".into()))
        );
        assert_eq!(
            Identity::parse("dns:billing"),
            Ok(Identity::Dns("billing".into()))
        );
        assert_eq!(
            Identity::parse("billing"),
            Ok(Identity::Dns("billing".into()))
        );
        assert!(Identity::parse("dns:spiffe://a/b").is_err());
        assert_eq!(
            Identity::parse("Billing.Example."),
            Identity::parse("billing.example")
        );
        assert!(Identity::parse("uri:").is_err());
        assert_ne!(
            Identity::Uri("spiffe://a/b".into()),
            Identity::Dns("spiffe://a/b".into())
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// A certificate's DNS SAN matches the allow-list entry `dns:NAME`
        /// whatever the case of either (and a trailing dot), and never a
        /// `uri:` entry with the same text; a URI matches only exactly.
        #[test]
        fn typed_identities_match_exactly_what_the_allow_list_says(
            label in "[a-zA-Z][a-zA-Z0-9-]{0,10}",
            upper in proptest::prelude::any::<bool>(),
            dot in proptest::prelude::any::<bool>(),
        ) {
            let name = format!("{label}.example");
            let presented = if upper { name.to_uppercase() } else { name.to_lowercase() };
            let peer = PeerIdentity::from_der(&certificate(&presented)).unwrap();
            let listed = format!("dns:{}{}", name.to_lowercase(), if dot { "." } else { "" });
            proptest::prop_assert_eq!(peer.identity(), &Identity::parse(&listed).unwrap());
            let as_uri = Identity::parse(&format!("uri:{}", name.to_lowercase())).unwrap();
            proptest::prop_assert_ne!(peer.identity(), &as_uri);
            let uri = format!("spiffe://notes.test/{label}");
            let parsed = Identity::parse(&uri).unwrap();
            proptest::prop_assert_eq!(&parsed, &Identity::Uri(uri.clone()));
            if uri.to_uppercase() != uri {
                proptest::prop_assert_ne!(parsed, Identity::parse(&uri.to_uppercase()).unwrap());
            }
        }
    }
}
