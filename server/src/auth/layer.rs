//! The tower layer that authenticates every call before routing.
//!
//! It sits inside tonic's per-connection stack, after the connection's TLS
//! identity is attached to the request and before the router, so no handler
//! (and no unknown path) runs unauthenticated.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use http::{HeaderMap, Request, Response, header::AUTHORIZATION};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use super::{Access, AuthError, Caller, CallerKind, Verifier};
use crate::tls::ConnInfo;

/// Which app clients each client-certificate identity may present tokens of.
pub type Bindings = HashMap<String, BTreeSet<String>>;

/// Verifies tokens and applies the per-call policy for one deployment.
pub struct Authenticator {
    verifier: Verifier,
    bindings: Bindings,
    allowed_identities: BTreeSet<String>,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
}

impl Authenticator {
    /// Decides with `verifier`; each issuer's policy comes with it.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            bindings: Bindings::new(),
            allowed_identities: BTreeSet::new(),
            rejections: Mutex::default(),
        }
    }

    /// Admits only callers whose certificate identity (URI SAN, else DNS
    /// SAN) is listed, on every path; an empty list admits any identity the
    /// TLS handshake verified.
    pub fn with_allowed_identities(mut self, identities: BTreeSet<String>) -> Self {
        self.allowed_identities = identities;
        self
    }

    /// Restricts the listed certificate identities (URI SAN, else DNS SAN)
    /// to tokens of the listed app clients; identities not listed are not
    /// restricted.
    pub fn with_bindings(mut self, bindings: Bindings) -> Self {
        self.bindings = bindings;
        self
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Refusals so far, by reason code.
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        self.rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn count(&self, reason: &'static str) {
        *self
            .rejections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Decides one call. `Ok(None)`: a public method, no token needed.
    pub async fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
        conn: Option<&ConnInfo>,
    ) -> Result<Option<Caller>, AuthError> {
        let conn = conn.ok_or(AuthError::NoPeerCertificate)?;
        if !self.allowed_identities.is_empty()
            && !self.allowed_identities.contains(conn.peer.name())
        {
            return Err(AuthError::IdentityNotAllowed(conn.peer.name().to_owned()));
        }
        let access = Access::of_path(path);
        if access == Access::Public {
            return Ok(None);
        }
        let token = bearer_token(headers)?;
        let verified = self.verifier.verify(token).await?;
        let policy = self
            .verifier
            .policy(&verified.issuer)
            .ok_or(AuthError::WrongIssuer)?;
        // RFC 8705: a certificate-bound token only travels with its certificate.
        if let Some(thumbprint) = &verified.cnf_x5t_s256
            && *thumbprint != conn.peer.x5t_s256
        {
            return Err(AuthError::CertificateMismatch);
        }
        if let Some(allowed) = self.bindings.get(conn.peer.name())
            && !allowed.contains(&verified.client_id)
        {
            return Err(AuthError::ClientNotBound(conn.peer.name().to_owned()));
        }
        if verified.kind == CallerKind::User
            && !policy.required_groups.is_empty()
            && policy.required_groups.is_disjoint(&verified.groups)
        {
            return Err(AuthError::MissingGroup);
        }
        if let Some(scope) = policy
            .scopes
            .missing(access, verified.kind, &verified.scopes)
        {
            return Err(AuthError::MissingScope(scope.to_owned()));
        }
        Ok(Some(Caller {
            subject: verified.subject.clone(),
            kind: verified.kind,
            issuer: verified.issuer.clone(),
            groups: verified.groups.clone(),
            client_id: verified.client_id.clone(),
            username: verified.username.clone(),
            scopes: verified.scopes.clone(),
            peer: conn.peer.clone(),
        }))
    }
}

/// The token of the single `authorization: Bearer <token>` entry.
fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingToken)?;
    if values.next().is_some() {
        return Err(AuthError::MalformedAuthorization);
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::MalformedAuthorization)?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or(AuthError::MalformedAuthorization)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(AuthError::MalformedAuthorization);
    }
    Ok(token)
}

/// Adds [`AuthService`] around the router.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer deciding with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self { auth }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

/// Authenticates a request, puts the [`Caller`] in its extensions, and
/// answers refusals itself with the gRPC status of the [`AuthError`].
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for AuthService<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone that was polled ready is the one we call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let decision = auth
                .authorize(&path, req.headers(), req.extensions().get::<ConnInfo>())
                .await;
            let peer = req
                .extensions()
                .get::<ConnInfo>()
                .map(|c| c.peer.name().to_owned())
                .unwrap_or_default();
            match decision {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        tracing::info!(
                            target: "notes::audit",
                            method = %path,
                            subject = %caller.subject,
                            client_id = %caller.client_id,
                            kind = ?caller.kind,
                            peer = %peer,
                            decision = "allow",
                            reason = "ok",
                        );
                        req.extensions_mut().insert(caller);
                    }
                    // Handlers get the typed caller; the raw token goes no further.
                    req.headers_mut().remove(AUTHORIZATION);
                    inner.call(req).await
                }
                Err(err) => {
                    auth.count(err.reason());
                    tracing::info!(
                        target: "notes::audit",
                        method = %path,
                        peer = %peer,
                        decision = "deny",
                        reason = err.reason(),
                    );
                    Ok(Status::from(err).into_http())
                }
            }
        })
    }
}
