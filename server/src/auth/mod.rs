//! Who is calling, and may they?
//!
//! Every call's `authorization: Bearer <JWT>` is verified by [`AuthLayer`]
//! before any handler runs. Handlers receive the result as a typed [`Caller`]
//! in the request extensions and never look at tokens themselves.
//!
//! One file per step:
//! - [`layer`]: the tower layer: applies the decision, writes the audit event, answers refusals.
//! - [`authorize`]: the per-call decision ([`Authenticator`]): identity allow-list, token, certificate bindings, groups, scopes.
//! - [`policy`]: the policy table: which paths are public, which scopes each access level needs (users and machines apart).
//! - [`verify`]: token verification ([`TokenVerifier`]), one function per check; the issuer check is here.
//! - [`cache`]: verified tokens, so a reused token skips RSA.
//! - [`keys`]: the [`keys::KeySource`] trait and fixed key sets (a JWKS file, the dev issuer).
//! - [`jwks`]: a user pool's JWKS over HTTPS (fetched, cached, refetched on unknown `kid`), and loading and refreshing every issuer's keys.
//! - [`signer`]: signs Cognito-shaped access tokens (dev mode, tests, benchmarks).

pub mod authorize;
pub mod cache;
pub mod jwks;
pub mod keys;
pub mod layer;
pub mod policy;
pub mod revocation;
pub mod signer;
pub mod verify;

use std::sync::Arc;

use tonic::Status;

pub use crate::audit::AuditAllowed;
pub use authorize::{Authenticator, Bindings};
pub use layer::AuthLayer;
pub use policy::{Access, AccessScopes, ScopePolicy};
pub use verify::{TokenPolicy, TokenVerifier, VerifiedToken};

use crate::tls::PeerIdentity;

/// Who holds a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    /// A signed-in user (the token has a `username`).
    User,
    /// A machine (another service) using client credentials (`sub` is the app
    /// client id, no `username`); configured as `machine_scopes`.
    Machine,
}

/// The authenticated caller of one request, put in the request extensions by
/// [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Caller {
    /// The owner of the notes this call may touch: the token's `sub` under
    /// its issuer's owner prefix (none with a single pool).
    pub owner: String,
    /// What the token established: `sub` (for logs), user or service,
    /// the issuer (user pool) that vouched for it, `cognito:groups`, the
    /// app client, the username and the scopes. Shared with the token
    /// cache, not copied per call.
    pub token: Arc<VerifiedToken>,
    /// The client certificate this call arrived over.
    pub peer: Arc<PeerIdentity>,
    /// Whether the auth layer writes this call's audit event
    /// ([`AuditAllowed`]).
    pub(crate) audited: bool,
}

impl Caller {
    /// The caller of `request`, as verified by [`AuthLayer`]. Fails closed:
    /// a request that did not pass the layer gets UNAUTHENTICATED.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
        request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::unauthenticated("request was not authenticated"))
    }
}

/// Why a call was refused. The `Display` text is sent to the caller, so it
/// names the failed check and never includes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata.
    #[error("missing authorization metadata: expected 'Bearer <access token>'")]
    MissingToken,
    /// `authorization` present but not a single `Bearer <token>`.
    #[error("authorization metadata must be exactly one 'Bearer <access token>'")]
    MalformedAuthorization,
    /// Over the size limit; rejected before decoding.
    #[error("token too large: larger than {0} bytes")]
    TooLarge(usize),
    /// Not a decodable JWT (segments, base64, JSON).
    #[error("token is not a well-formed JWT")]
    Malformed,
    /// The claims do not have the expected types.
    #[error(
        "token claims are malformed: a claim has the wrong type or the payload is not a JSON object"
    )]
    MalformedClaims,
    /// The header names an algorithm the policy does not allow.
    #[error("token algorithm {0} is not allowed")]
    AlgorithmNotAllowed(String),
    /// The header carries a key reference that is never trusted.
    #[error("token header parameter '{0}' is not accepted")]
    UntrustedHeader(&'static str),
    /// No `kid` in the header.
    #[error("token header has no key id (kid)")]
    MissingKeyId,
    /// `kid` not in the issuer's key set.
    #[error("token signing key is unknown to the issuer's key set")]
    UnknownKey,
    /// The key's own type or algorithm does not fit the token's algorithm.
    #[error("token algorithm does not match its signing key")]
    KeyAlgorithmMismatch,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iat` is in the future (beyond the leeway).
    #[error("token was issued in the future")]
    IssuedInFuture,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not trusted")]
    WrongIssuer,
    /// A claim the policy requires is absent.
    #[error("token has no '{0}' claim")]
    MissingClaim(&'static str),
    /// `token_use` is not `access`.
    #[error("token_use must be 'access'")]
    WrongTokenUse(String),
    /// `client_id` is not in the allow-list.
    #[error("token client_id is not allowed to call this service")]
    ClientNotAllowed,
    /// The keys could not be obtained; verification is refused, not skipped.
    #[error("token keys are unavailable; try again later")]
    KeysUnavailable,
    /// The connection carries no verified client certificate.
    #[error("no verified client certificate on this connection")]
    NoPeerCertificate,
    /// Neither a user token (`username`) nor a client-credentials token (`sub` = `client_id`).
    #[error("token is neither a user token nor a client-credentials token")]
    UnknownTokenKind,
    /// The token is bound (`cnf.x5t#S256`) to another client certificate.
    #[error("token is bound to a different client certificate")]
    CertificateMismatch,
    /// A valid token without a scope this method requires.
    #[error("token lacks required scope '{0}'")]
    MissingScope(String),
    /// A valid user token outside every required group.
    #[error("token is not in any required group")]
    MissingGroup,
    /// The client certificate's identity is not on the allow-list.
    #[error("client certificate identity '{0}' is not allowed to call this service")]
    IdentityNotAllowed(String),
    /// This client certificate may not present tokens of this app client
    /// (or this app client's tokens are bound to other certificates).
    #[error("client certificate '{0}' may not present tokens of this client_id")]
    ClientNotBound(String),
    /// This client certificate's calls were refused too often lately; its
    /// next ones are refused before any token is verified.
    #[error("too many refused calls from this client certificate; slow down and fix its token")]
    TooManyRefusals,
    /// With several pools, an unprefixed pool's `sub` may not contain `:`;
    /// no owner may start with `#` (the store's own partitions).
    #[error("token subject contains ':' or starts with '#', which this deployment reserves")]
    ReservedSubject,
    /// The token is on the deployment's revocation list.
    #[error("token revoked")]
    Revoked,
    /// The revocation list has not been read for longer than its limit.
    #[error("the token revocation list could not be read lately; retry with backoff")]
    RevocationsStale,
}

impl AuthError {
    /// A short, stable code for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::MalformedAuthorization => "malformed_authorization",
            AuthError::TooLarge(_) => "too_large",
            AuthError::Malformed => "malformed",
            AuthError::MalformedClaims => "malformed_claims",
            AuthError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            AuthError::UntrustedHeader(_) => "untrusted_header",
            AuthError::MissingKeyId => "missing_kid",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::KeyAlgorithmMismatch => "key_alg_mismatch",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::WrongTokenUse(_) => "wrong_token_use",
            AuthError::ClientNotAllowed => "client_not_allowed",
            AuthError::KeysUnavailable => "keys_unavailable",
            AuthError::NoPeerCertificate => "no_peer_certificate",
            AuthError::UnknownTokenKind => "unknown_token_kind",
            AuthError::CertificateMismatch => "certificate_mismatch",
            AuthError::MissingScope(_) => "missing_scope",
            AuthError::MissingGroup => "missing_group",
            AuthError::ClientNotBound(_) => "client_not_bound",
            AuthError::IdentityNotAllowed(_) => "identity_not_allowed",
            AuthError::ReservedSubject => "reserved_subject",
            AuthError::TooManyRefusals => "too_many_refusals",
            AuthError::Revoked => "revoked",
            AuthError::RevocationsStale => "revocations_stale",
        }
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::MissingScope(_)
            | AuthError::MissingGroup
            | AuthError::ClientNotBound(_)
            | AuthError::IdentityNotAllowed(_) => Status::permission_denied(err.to_string()),
            AuthError::KeysUnavailable | AuthError::RevocationsStale => {
                Status::unavailable(err.to_string())
            }
            AuthError::TooManyRefusals => Status::resource_exhausted(err.to_string()),
            _ => Status::unauthenticated(err.to_string()),
        }
    }
}
