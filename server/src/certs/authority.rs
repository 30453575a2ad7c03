//! A small certificate authority on rcgen, with no openssl involved: create
//! a CA, issue server and client certificates, revoke them in a CRL. The
//! toolkit behind `notes-server certs`, also used by dev mode and the tests.
//! Keys are ECDSA P-256.

use std::{net::IpAddr, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
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
    /// Its serial number, for revocation.
    pub serial: Vec<u8>,
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

/// What a leaf certificate may be used for (extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// TLS server (serverAuth).
    Server,
    /// TLS client (clientAuth).
    Client,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Not before.
    pub not_before: OffsetDateTime,
    /// Not after.
    pub not_after: OffsetDateTime,
}

/// `now + valid_for`, never past the end of 9999 (the last instant X.509
/// can write), whatever `valid_for` is.
fn until(now: OffsetDateTime, valid_for: Duration) -> OffsetDateTime {
    let last = time::macros::datetime!(9999-12-31 23:59:59 UTC);
    time::Duration::try_from(valid_for)
        .ok()
        .and_then(|d| now.checked_add(d))
        .map_or(last, |t| t.min(last))
}

impl Validity {
    /// From five minutes ago (a peer's slightly slow clock) for `valid_for`.
    pub fn starting_now(valid_for: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - time::Duration::minutes(5),
            not_after: until(now, valid_for),
        }
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "notes");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A random positive 128-bit serial number.
fn random_serial() -> Result<Vec<u8>, PkiError> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| rcgen::Error::RingUnspecified)?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    Ok(serial.to_vec())
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
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
        let validity = Validity::starting_now(valid_for);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// An existing CA from its certificate and key (PEM).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        Ok(Self {
            issuer: Issuer::from_ca_cert_pem(cert_pem, key)?,
            cert_pem: cert_pem.to_owned(),
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
        self.issue(subject, Usage::Server, Validity::starting_now(valid_for))
    }

    /// Issues a client certificate (clientAuth) for `subject`.
    pub fn issue_client(
        &self,
        subject: &Subject,
        valid_for: Duration,
    ) -> Result<CertifiedKey, PkiError> {
        self.issue(subject, Usage::Client, Validity::starting_now(valid_for))
    }

    /// Issues a certificate for `subject` with `usage`, valid during `validity`.
    pub fn issue(
        &self,
        subject: &Subject,
        usage: Usage,
        validity: Validity,
    ) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate()?;
        let serial = random_serial()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&subject.common_name);
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
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
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        })
    }

    /// A CRL (PEM) revoking `serials`, numbered `crl_number`, valid for `valid_for`.
    pub fn crl(
        &self,
        serials: &[Vec<u8>],
        crl_number: u64,
        valid_for: Duration,
    ) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: until(now, valid_for),
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

/// A file that should hold one PEM certificate and does not.
#[derive(Debug, thiserror::Error)]
pub enum NotACertificate {
    /// No PEM certificate block.
    #[error("holds no PEM certificate")]
    Pem(#[source] rustls::pki_types::pem::Error),
    /// The block is not X.509.
    #[error("does not hold an X.509 certificate")]
    X509(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
}

/// The serial number of a PEM certificate.
pub fn serial_of(cert_pem: &str) -> Result<Vec<u8>, NotACertificate> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    use x509_parser::prelude::FromDer;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(NotACertificate::Pem)?;
    let (_, cert) =
        x509_parser::certificate::X509Certificate::from_der(&der).map_err(NotACertificate::X509)?;
    Ok(cert.raw_serial().to_vec())
}

/// What the certificate ledger records of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Its serial number.
    pub serial: Vec<u8>,
    /// Its notAfter, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of its DER.
    pub sha256: Vec<u8>,
}

/// The serial, notAfter and fingerprint of a PEM certificate.
pub fn facts_of(cert_pem: &str) -> Result<Facts, NotACertificate> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(NotACertificate::Pem)?;
    let cert = parse(&der)?;
    Ok(Facts {
        serial: cert.raw_serial().to_vec(),
        not_after: cert.validity().not_after.timestamp(),
        sha256: aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der)
            .as_ref()
            .to_vec(),
    })
}

/// Why a certificate is not one of this CA's.
#[derive(Debug, thiserror::Error)]
pub enum NotIssuedHere {
    /// The file is not a certificate.
    #[error(transparent)]
    Unreadable(#[from] NotACertificate),
    /// Its issuer is another name.
    #[error("was issued by {issuer:?}, not by this CA ({ca:?})")]
    OtherIssuer {
        /// The certificate's issuer.
        issuer: String,
        /// This CA's subject.
        ca: String,
    },
    /// The issuer name matches but this CA's key did not sign it.
    #[error("names this CA as issuer but is not signed by its key")]
    BadSignature,
}

fn parse(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, NotACertificate> {
    use x509_parser::prelude::FromDer;
    Ok(x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(NotACertificate::X509)?
        .1)
}

/// Checks that `cert_pem` was issued by the CA of `ca_pem`: the issuer is
/// the CA's subject and the CA's key verifies the signature.
pub fn check_issued_by(cert_pem: &str, ca_pem: &str) -> Result<(), NotIssuedHere> {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA384_ASN1, ECDSA_P384_SHA256_ASN1,
        ECDSA_P384_SHA384_ASN1, ED25519, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA384,
        RSA_PKCS1_2048_8192_SHA512, UnparsedPublicKey, VerificationAlgorithm,
    };
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    use x509_parser::oid_registry as oid;
    let cert_der =
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(NotACertificate::Pem)?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(NotACertificate::Pem)?;
    let (cert, ca) = (parse(&cert_der)?, parse(&ca_der)?);
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return Err(NotIssuedHere::OtherIssuer {
            issuer: cert.issuer().to_string(),
            ca: ca.subject().to_string(),
        });
    }
    let algorithm = &cert.signature_algorithm.algorithm;
    let ca_key = &ca.public_key().subject_public_key.data;
    // An ECDSA algorithm names the hash; the curve is the CA key's (a P-384
    // point is 97 bytes uncompressed, 49 compressed).
    let p384 = matches!(ca_key.len(), 49 | 97);
    let verification: &'static dyn VerificationAlgorithm =
        if *algorithm == oid::OID_SIG_ECDSA_WITH_SHA256 {
            if p384 {
                &ECDSA_P384_SHA256_ASN1
            } else {
                &ECDSA_P256_SHA256_ASN1
            }
        } else if *algorithm == oid::OID_SIG_ECDSA_WITH_SHA384 {
            if p384 {
                &ECDSA_P384_SHA384_ASN1
            } else {
                &ECDSA_P256_SHA384_ASN1
            }
        } else if *algorithm == oid::OID_SIG_ED25519 {
            &ED25519
        } else if *algorithm == oid::OID_PKCS1_SHA256WITHRSA {
            &RSA_PKCS1_2048_8192_SHA256
        } else if *algorithm == oid::OID_PKCS1_SHA384WITHRSA {
            &RSA_PKCS1_2048_8192_SHA384
        } else if *algorithm == oid::OID_PKCS1_SHA512WITHRSA {
            &RSA_PKCS1_2048_8192_SHA512
        } else {
            return Err(NotIssuedHere::BadSignature);
        };
    UnparsedPublicKey::new(verification, ca_key)
        .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
        .map_err(|_| NotIssuedHere::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DER: `tag`, its length, `content`.
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend(content);
        out
    }

    /// `cert` re-signed by `ca` with ECDSA over SHA-384 (on the CA key's
    /// P-256 curve: a valid pairing rcgen does not make).
    fn resigned_with_sha384(cert_pem: &str, ca: &CertificateAuthority) -> String {
        use p256::ecdsa::signature::hazmat::PrehashSigner;
        use p256::pkcs8::DecodePrivateKey;
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        const SHA256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
        const SHA384: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let parsed = parse(&cert_der).unwrap();
        let mut tbs = parsed.tbs_certificate.as_ref().to_vec();
        let at = tbs.windows(SHA256.len()).position(|w| w == SHA256).unwrap();
        tbs[at..at + SHA384.len()].copy_from_slice(&SHA384);
        let key = rcgen::KeyPair::from_pem(&ca.key_pem()).unwrap();
        let signer = p256::ecdsa::SigningKey::from_pkcs8_der(&key.serialize_der()).unwrap();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, &tbs);
        let signature: p256::ecdsa::Signature = signer.sign_prehash(digest.as_ref()).unwrap();
        let mut bits = vec![0];
        bits.extend(signature.to_der().as_bytes());
        let body = [tbs, der(0x30, &SHA384), der(0x03, &bits)].concat();
        let cert = der(0x30, &body);
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &cert);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    }

    #[test]
    fn a_p256_ca_signing_with_sha384_is_recognised_and_another_ca_is_not() {
        let ca = CertificateAuthority::generate("ca", Duration::from_secs(3600)).unwrap();
        let other = CertificateAuthority::generate("ca", Duration::from_secs(3600)).unwrap();
        let subject = Subject {
            common_name: "svc".into(),
            dns_names: vec![],
            ips: vec![],
            uris: vec![],
        };
        let cert = ca
            .issue_client(&subject, Duration::from_secs(3600))
            .unwrap();
        check_issued_by(&cert.cert_pem, ca.cert_pem()).unwrap();

        let sha384 = resigned_with_sha384(&cert.cert_pem, &ca);
        assert_ne!(sha384, cert.cert_pem);
        check_issued_by(&sha384, ca.cert_pem()).expect("P-256 with SHA-384 is a valid pairing");
        // Same name, other key: the signature decides.
        assert!(matches!(
            check_issued_by(&sha384, other.cert_pem()),
            Err(NotIssuedHere::BadSignature)
        ));
    }
}
