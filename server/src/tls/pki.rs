//! A small certificate authority on rcgen: enough for dev mode and tests,
//! with no openssl involved. Keys are ECDSA P-256.

use std::{net::IpAddr, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// Failures issuing certificates.
#[derive(Debug, thiserror::Error)]
#[error("certificate issuance failed: {0}")]
pub struct PkiError(#[from] rcgen::Error);

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
}

/// A certificate authority that can issue server and client certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// Who a leaf certificate is for.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// Subject common name.
    pub common_name: String,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// URI SANs, e.g. `spiffe://notes.local/billing`.
    pub uris: Vec<String>,
}

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = OffsetDateTime::now_utc();
    // Backdate a little so a peer's slightly slow clock still accepts it.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + valid_for;
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "notes");
    dn.push(DnType::CommonName, common_name);
    dn
}

impl CertificateAuthority {
    /// A new self-signed CA valid for `valid_for`.
    pub fn generate(common_name: &str, valid_for: Duration) -> Result<Self, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, valid_for);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (the trust anchor to distribute).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a server certificate (serverAuth) for `subject`.
    pub fn issue_server(
        &self,
        subject: &Subject,
        valid_for: Duration,
    ) -> Result<CertifiedKey, PkiError> {
        self.issue(subject, ExtendedKeyUsagePurpose::ServerAuth, valid_for)
    }

    /// Issues a client certificate (clientAuth) for `subject`.
    pub fn issue_client(
        &self,
        subject: &Subject,
        valid_for: Duration,
    ) -> Result<CertifiedKey, PkiError> {
        self.issue(subject, ExtendedKeyUsagePurpose::ClientAuth, valid_for)
    }

    fn issue(
        &self,
        subject: &Subject,
        usage: ExtendedKeyUsagePurpose,
        valid_for: Duration,
    ) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&subject.common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        for dns in &subject.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.clone().try_into()?));
        }
        for ip in &subject.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for uri in &subject.uris {
            params
                .subject_alt_names
                .push(SanType::URI(uri.clone().try_into()?));
        }
        validity(&mut params, valid_for);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
