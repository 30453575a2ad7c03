//! The client's error type: one variant per condition a caller acts upon,
//! each carrying the server's message.

use tonic::{Code, Status};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failed call or set-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// NOT_FOUND: no such note for this caller.
    #[error("not found: {0}")]
    NotFound(String),
    /// ABORTED: `expected_version` did not match; re-read and retry.
    #[error("version conflict: {0}")]
    Conflict(String),
    /// ALREADY_EXISTS: the `request_id` was used with other content.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// INVALID_ARGUMENT: the message names the field.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// UNAUTHENTICATED: missing, expired or otherwise invalid token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// PERMISSION_DENIED: valid token without the needed scope.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// UNAVAILABLE or DEADLINE_EXCEEDED: safe to retry with backoff.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Could not connect (refused, TLS handshake failed, timed out); the
    /// transport's causes follow as [`source`](std::error::Error::source)s.
    #[error("cannot connect: {message}")]
    Connect {
        /// What failed.
        message: String,
        /// Why, when the transport said.
        #[source]
        source: Option<BoxError>,
    },
    /// The server refused this client's certificate during the TLS handshake
    /// (a TLS alert: unknown CA, revoked, expired, ...). Not transient.
    #[error("the server refused this client certificate: {alert}")]
    CertificateRefused {
        /// The alert and what it usually means.
        alert: String,
    },
    /// Any other status.
    #[error("{code:?}: {message}")]
    Other {
        /// The gRPC code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// Bad local configuration (files, endpoint).
    #[error("configuration: {message}")]
    Config {
        /// What is wrong, naming the file or setting.
        message: String,
        /// The underlying failure (I/O, parsing), if any.
        #[source]
        source: Option<BoxError>,
    },
    /// No token could be had (file unreadable, Cognito refused, endpoint down).
    #[error("token: {message}")]
    Token {
        /// What failed, with the token endpoint's answer when it gave one.
        message: String,
        /// The underlying failure (I/O, HTTP), if any.
        #[source]
        source: Option<BoxError>,
    },
}

/// A cause kept as text: the transport's errors inside a [`Status`] cannot be
/// taken out of it, so their messages are copied, chain intact.
#[derive(Debug)]
struct Cause {
    text: String,
    source: Option<Box<Cause>>,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|c| c as _)
    }
}

impl Cause {
    fn chain(err: &dyn std::error::Error) -> Box<Cause> {
        Box::new(Cause {
            text: err.to_string(),
            source: err.source().map(Cause::chain),
        })
    }
}

impl Error {
    /// A configuration error with no underlying cause.
    pub fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
            source: None,
        }
    }

    /// A configuration error caused by `source`.
    pub fn config_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Config {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A token error with no underlying cause.
    pub fn token(message: impl Into<String>) -> Self {
        Error::Token {
            message: message.into(),
            source: None,
        }
    }

    /// A token error caused by `source`.
    pub fn token_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Token {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn connect(err: tonic::transport::Error) -> Self {
        Error::Connect {
            message: err.to_string(),
            source: err.source().map(|s| Cause::chain(s) as BoxError),
        }
        .refusal_named()
    }

    /// A connection error caused by a TLS alert from the server, as
    /// [`Error::CertificateRefused`] naming what the alert means.
    fn refusal_named(self) -> Self {
        if !matches!(self, Error::Connect { .. }) {
            return self;
        }
        let chain = self.chain();
        let Some(at) = chain.find("received fatal alert: ") else {
            return self;
        };
        let alert: String = chain[at + 22..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        let meaning = match alert.as_str() {
            "UnknownCA" => "unknown CA: the server does not trust the CA that issued it",
            "CertificateRevoked" => "revoked: the server's CRL lists it",
            "CertificateExpired" => "expired, or not yet valid",
            "BadCertificate" | "UnsupportedCertificate" => {
                "not usable as a client certificate (its key usage or form)"
            }
            "CertificateRequired" => "none was sent: give --cert and --key",
            "DecryptError" => {
                "its signature does not verify: issued by another CA of the same name, or altered"
            }
            "AccessDenied" => "its identity is not allowed",
            // Other alerts (protocol version, ALPN, internal errors) are not
            // about the certificate: the connection error stays as it is.
            _ => return self,
        };
        Error::CertificateRefused {
            alert: format!("{alert} ({meaning})"),
        }
    }

    /// The gRPC code this error stands for, if it came from a call.
    pub fn code(&self) -> Option<Code> {
        Some(match self {
            Error::NotFound(_) => Code::NotFound,
            Error::Conflict(_) => Code::Aborted,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Other { code, .. } => *code,
            Error::Connect { .. }
            | Error::CertificateRefused { .. }
            | Error::Config { .. }
            | Error::Token { .. } => return None,
        })
    }

    /// Whether a later attempt may succeed: UNAVAILABLE, or a connection
    /// that failed (refused, reset, timed out), but not a TLS handshake the
    /// server refused (an alert or a certificate problem stays as it is).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unavailable(_) => true,
            Error::Connect { .. } => {
                let chain = self.chain().to_ascii_lowercase();
                !(chain.contains("alert") || chain.contains("certificate"))
            }
            _ => false,
        }
    }

    /// This error and its causes on one line, joined with `: `; a cause whose
    /// text is already in the line is not repeated.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !out.contains(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            source = cause.source();
        }
        out
    }
}

use std::error::Error as _;

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        // A status made by the client's transport, not sent by the server:
        // the connection failed (refused, TLS alert, reset).
        if let Some(cause) = status.source()
            && matches!(
                status.code(),
                Code::Unknown | Code::Cancelled | Code::Unavailable
            )
        {
            return Error::Connect {
                message: status.message().to_owned(),
                source: Some(Cause::chain(cause)),
            }
            .refusal_named();
        }
        let message = status.message().to_owned();
        match status.code() {
            Code::NotFound => Error::NotFound(message),
            Code::Aborted => Error::Conflict(message),
            Code::AlreadyExists => Error::AlreadyExists(message),
            Code::InvalidArgument => Error::InvalidArgument(message),
            Code::Unauthenticated => Error::Unauthenticated(message),
            Code::PermissionDenied => Error::PermissionDenied(message),
            Code::Unavailable | Code::DeadlineExceeded => Error::Unavailable(message),
            code => Error::Other { code, message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_failure(chain: &[&str]) -> Error {
        let mut source: Option<Box<Cause>> = None;
        for text in chain.iter().rev() {
            source = Some(Box::new(Cause {
                text: (*text).to_owned(),
                source,
            }));
        }
        Error::Connect {
            message: "transport error".into(),
            source: source.map(|c| c as BoxError),
        }
    }

    #[test]
    fn a_tls_alert_names_the_refusal_and_what_it_means() {
        for (alert, meaning) in [
            ("UnknownCA", "unknown CA"),
            ("CertificateRevoked", "revoked"),
            ("CertificateExpired", "expired"),
            ("BadCertificate", "not usable as a client certificate"),
            (
                "UnsupportedCertificate",
                "not usable as a client certificate",
            ),
            ("CertificateRequired", "none was sent"),
            ("DecryptError", "signature does not verify"),
            ("AccessDenied", "identity is not allowed"),
        ] {
            let err = connect_failure(&[
                "connection error",
                &format!("received fatal alert: {alert}"),
            ])
            .refusal_named();
            let Error::CertificateRefused { alert: text } = &err else {
                panic!("{alert}: {err:?}");
            };
            assert!(text.starts_with(&format!("{alert} (")), "{text}");
            assert!(text.contains(meaning), "{alert}: {text}");
            assert!(!err.is_transient(), "{alert} would be retried");
        }
        // An alert that is not about the certificate stays a connection error.
        let other =
            connect_failure(&["received fatal alert: NoApplicationProtocol"]).refusal_named();
        assert!(matches!(other, Error::Connect { .. }), "{other:?}");
        // No alert: still a connection failure, and transient.
        let refused = connect_failure(&["tcp connect error", "Connection refused"]).refusal_named();
        assert!(matches!(refused, Error::Connect { .. }), "{refused:?}");
        assert!(refused.is_transient());
        // A certificate problem on our side is not retried either.
        assert!(!connect_failure(&["invalid peer certificate: UnknownIssuer"]).is_transient());
        // Only connection errors are looked at.
        assert!(matches!(
            Error::config("x").refusal_named(),
            Error::Config { .. }
        ));
    }

    #[test]
    fn the_chain_joins_causes_once_each() {
        let err = connect_failure(&[
            "tcp connect error",
            "Connection refused",
            "Connection refused",
        ]);
        assert_eq!(
            err.chain(),
            "cannot connect: transport error: tcp connect error: Connection refused"
        );
        let nested = Cause::chain(&connect_failure(&["inner"]));
        assert_eq!(nested.to_string(), "cannot connect: transport error");
        assert_eq!(
            std::error::Error::source(&*nested).map(ToString::to_string),
            Some("inner".to_owned())
        );
    }
}
