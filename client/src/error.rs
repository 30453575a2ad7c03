//! The client's error type: one variant per condition a caller acts upon,
//! each carrying the server's message.

use tonic::{Code, Status};

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
    /// Could not connect (refused, TLS handshake failed, timed out).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Any other status.
    #[error("{code:?}: {message}")]
    Other {
        /// The gRPC code.
        code: Code,
        /// The server's message.
        message: String,
    },
    /// Bad local configuration (files, endpoint).
    #[error("configuration: {0}")]
    Config(String),
    /// No token could be had (file unreadable, Cognito refused, endpoint down).
    #[error("token: {0}")]
    Token(String),
}

impl Error {
    pub(crate) fn connect(err: tonic::transport::Error) -> Self {
        Error::Connect(format!("{err}{}", causes(&err)))
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
            Error::Connect(_) | Error::Config(_) | Error::Token(_) => return None,
        })
    }
}

/// The causes under an error (transport and TLS errors), each after `: `.
fn causes(err: &dyn std::error::Error) -> String {
    let mut out = String::new();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        let causes = causes(&status);
        // A status made by the client's transport, not sent by the server:
        // the connection failed (refused, TLS alert, reset).
        if !causes.is_empty()
            && matches!(
                status.code(),
                Code::Unknown | Code::Cancelled | Code::Unavailable
            )
        {
            return Error::Connect(format!("{}{causes}", status.message()));
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
