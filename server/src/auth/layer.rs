//! The tower layer that authenticates every call before routing.
//!
//! It sits inside tonic's per-connection stack, after the connection's TLS
//! identity is attached to the request and before the router, so no handler
//! (and no unknown path) runs unauthenticated. The decision itself is
//! [`Authenticator::authorize`]; this layer applies it, writes the audit
//! event and answers refusals with their gRPC status.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, Response, header::AUTHORIZATION};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use super::Authenticator;
use crate::{
    audit,
    tls::{ConnInfo, PeerIdentity},
};

/// The peer's certificate identity in a log line (escaped by its `Display`),
/// or nothing on a connection without one.
struct DisplayPeer(Option<Arc<PeerIdentity>>);

impl std::fmt::Display for DisplayPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(peer) => peer.fmt(f),
            None => Ok(()),
        }
    }
}

/// Adds [`AuthService`] around the router.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    refusals: Arc<audit::RefusalLog>,
}

impl AuthLayer {
    /// A layer deciding with `auth`, auditing refusals to `refusals`.
    pub fn new(auth: Arc<Authenticator>, refusals: Arc<audit::RefusalLog>) -> Self {
        Self { auth, refusals }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            refusals: self.refusals.clone(),
        }
    }
}

/// Authenticates a request, puts the [`Caller`](super::Caller) in its
/// extensions, and answers refusals itself with the gRPC status of the
/// [`AuthError`](super::AuthError).
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    refusals: Arc<audit::RefusalLog>,
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
        let refusals = self.refusals.clone();
        Box::pin(async move {
            let decision = auth
                .authorize(
                    req.uri().path(),
                    req.headers(),
                    req.extensions().get::<ConnInfo>(),
                )
                .await;
            // The path, and the names the peer and the token chose, are the
            // caller's: the audit trail escapes and bounds them, and formats
            // them only for a line that is kept.
            let peer =
                |req: &Request<B>| req.extensions().get::<ConnInfo>().map(|c| c.peer.clone());
            match decision {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        auth.count_allowed(&caller);
                        if caller.audited {
                            audit::allowed(
                                req.uri().path(),
                                &caller.token.subject,
                                &caller.token.client_id,
                                &caller.token.kind,
                                &DisplayPeer(peer(&req)),
                            );
                        }
                        req.extensions_mut().insert(caller);
                    }
                    // Handlers get the typed caller; the raw token goes no further.
                    req.headers_mut().remove(AUTHORIZATION);
                    inner.call(req).await
                }
                Err(err) => {
                    crate::metrics::metrics()
                        .auth_decisions
                        .with_label_values(&["deny", err.reason(), "none", "none"])
                        .inc();
                    let peer = peer(&req);
                    let identity = peer.as_deref().map_or("", PeerIdentity::identity_text);
                    refusals.refused(
                        req.uri().path(),
                        identity,
                        &DisplayPeer(peer.clone()),
                        err.reason(),
                    );
                    Ok(Status::from(err).into_http())
                }
            }
        })
    }
}
