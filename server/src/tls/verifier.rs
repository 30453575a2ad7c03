//! Client-certificate verification that says why it refused.
//!
//! rustls' WebPKI verifier decides; this wrapper logs a refusal with the
//! certificate's subject, serial and SANs, so an operator can tell which
//! caller was turned away and why (expired, revoked, unknown CA, ...). It
//! also refuses a certificate that CRLs loaded after its configuration was
//! built revoke (see [`RevocationsInForce`]).

use std::sync::Arc;

use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
    client::danger::HandshakeSignatureValid,
    pki_types::{CertificateDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};
use x509_parser::prelude::FromDer;

use super::{RevocationsInForce, Revoked};
use crate::telemetry::{LogEvery, escape};

/// Wraps a verifier and logs its refusals: at most one line per 10 s with
/// the count held back (anyone can connect with any certificate), every
/// name in it escaped (its subject and SANs are the peer's choice).
#[derive(Debug)]
pub struct LoggingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    /// What the CRLs `inner` checks revoke.
    own: Arc<Revoked>,
    in_force: Arc<RevocationsInForce>,
    log: LogEvery,
}

impl LoggingVerifier {
    /// Logs the refusals of `inner`, which checks the CRLs revoking `own`,
    /// and refuses what `in_force` revokes once it has moved on from `own`.
    pub fn new(
        inner: Arc<dyn ClientCertVerifier>,
        own: Arc<Revoked>,
        in_force: Arc<RevocationsInForce>,
    ) -> Self {
        Self {
            inner,
            own,
            in_force,
            log: LogEvery::new(std::time::Duration::from_secs(10)),
        }
    }

    /// Whether CRLs loaded since this configuration was built revoke
    /// `end_entity`. Free while this configuration is the newest: `inner`
    /// has checked those CRLs already.
    fn revoked_since(&self, end_entity: &CertificateDer<'_>) -> bool {
        let in_force = self.in_force.get();
        if Arc::ptr_eq(&in_force, &self.own) {
            return false;
        }
        match x509_parser::certificate::X509Certificate::from_der(end_entity) {
            Ok((_, cert)) => {
                in_force.contains(&(cert.issuer().as_raw().to_vec(), cert.raw_serial().to_vec()))
            }
            // `inner` parsed it; if this cannot, refuse.
            Err(_) => true,
        }
    }
}

/// "subject (serial …, SANs …)" of a certificate, for logs.
pub fn describe(der: &[u8]) -> String {
    match x509_parser::certificate::X509Certificate::from_der(der) {
        Ok((_, cert)) => {
            let sans = cert
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let text = format!(
                "{} (serial {}, SANs [{sans}])",
                cert.subject(),
                cert.raw_serial_as_string()
            );
            escape(&text).into_owned()
        }
        Err(_) => "an unparseable certificate".to_owned(),
    }
}

impl ClientCertVerifier for LoggingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let mut result = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        if result.is_ok() && self.revoked_since(end_entity) {
            result = Err(Error::InvalidCertificate(CertificateError::Revoked));
        }
        if let Err(err) = &result
            && let Some(suppressed) = self.log.check()
        {
            tracing::warn!(
                certificate = %describe(end_entity),
                error = %err,
                suppressed,
                "client certificate refused"
            );
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
