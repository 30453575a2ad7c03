//! The per-call decision: who is calling, and may they call this method?
//!
//! [`Authenticator::authorize`] takes the request path, its headers and the
//! connection's verified client certificate, and returns the [`Caller`] or
//! the [`AuthError`] that refuses the call. In order: the certificate
//! identity allow-list, the path's access level (public paths stop here), the
//! bearer token (verified by [`TokenVerifier`]), the RFC 8705 certificate
//! binding, the certificate-to-client bindings (both ways: a bound
//! certificate presents only its clients' tokens, and a bound client's tokens
//! come only over its certificates), the required groups and the scopes of
//! the access level. The caller's owner is the token's `sub` under its
//! issuer's owner prefix, so two pools never share an owner.

use std::collections::{BTreeSet, HashMap};

use http::{HeaderMap, header::AUTHORIZATION};

use super::{Access, AuthError, Caller, CallerKind, TokenVerifier};
use crate::{
    admission::RefusalBudget,
    audit::{AuditAllowed, TokenMark},
    tls::{ConnInfo, Identity},
};

/// Which app clients each client-certificate identity may present tokens of.
pub type Bindings = HashMap<Identity, BTreeSet<String>>;

/// Verifies tokens and applies the per-call policy for one deployment.
pub struct Authenticator {
    verifier: TokenVerifier,
    bindings: Bindings,
    /// Every client id some binding names: their tokens travel only over
    /// the identities bound to them.
    bound_clients: BTreeSet<String>,
    allowed_identities: BTreeSet<Identity>,
    namespaced_owners: bool,
    audit_allowed: AuditAllowed,
    /// Refusals that cost verification a connection (and an identity) may
    /// draw before its uncached tokens are refused unverified (RSA is the
    /// costly part of a refusal).
    refusals: Option<RefusalBudget>,
    /// The deployment's token revocation list, as this instance read it.
    revocations: std::sync::Arc<super::revocation::RevocationList>,
    /// The allowed-call counters by issuer, user then machine: found once,
    /// not by their labels on every call.
    allowed: HashMap<String, [prometheus::IntCounter; 2], foldhash::fast::RandomState>,
}

impl Authenticator {
    /// Decides with `verifier`; each issuer's policy comes with it. The
    /// refusal budget is on ([`crate::limits::REFUSALS_PER_CONNECTION`]).
    pub fn new(verifier: TokenVerifier) -> Self {
        let allowed = verifier
            .issuers()
            .map(|issuer| {
                let iss = issuer.policy.issuer.as_str();
                let counter = |kind| {
                    crate::metrics::metrics()
                        .auth_decisions
                        .with_label_values(&["allow", "ok", iss, kind])
                };
                (iss.to_owned(), [counter("user"), counter("machine")])
            })
            .collect();
        Self {
            allowed,
            verifier,
            bindings: Bindings::new(),
            bound_clients: BTreeSet::new(),
            allowed_identities: BTreeSet::new(),
            namespaced_owners: false,
            audit_allowed: AuditAllowed::default(),
            refusals: Some(RefusalBudget::new(crate::limits::REFUSALS_PER_CONNECTION)),
            revocations: std::sync::Arc::default(),
        }
    }

    /// Admits only callers whose certificate identity (URI SAN, else DNS
    /// SAN) is listed, on every path; an empty list admits any identity the
    /// TLS handshake verified.
    pub fn with_allowed_identities(mut self, identities: BTreeSet<Identity>) -> Self {
        self.allowed_identities = identities;
        self
    }

    /// Restricts the listed certificate identities (URI SAN, else DNS SAN)
    /// to tokens of the listed app clients, and those app clients' tokens to
    /// the identities bound to them; identities and clients that no binding
    /// names are not restricted.
    pub fn with_bindings(mut self, bindings: Bindings) -> Self {
        self.bound_clients = bindings.values().flatten().cloned().collect();
        self.bindings = bindings;
        self
    }

    /// Several issuers share the table: a token whose issuer has no owner
    /// prefix may not have a `sub` containing `:`, which prefixed owners use.
    pub fn with_namespaced_owners(mut self, namespaced: bool) -> Self {
        self.namespaced_owners = namespaced;
        self
    }

    /// Whether `peer` may connect at all (the identity allow-list); the
    /// accept loop asks once per connection, `authorize` again per call.
    pub fn admits(&self, peer: &crate::tls::PeerIdentity) -> bool {
        self.allowed_identities.is_empty() || self.allowed_identities.contains(peer.identity())
    }

    /// Lets each connection draw refusals that cost verification at
    /// `budget` (and each identity ten times that, [`RefusalBudget`]); past
    /// it, its calls with uncached tokens are refused before verification.
    pub fn with_refusal_budget(mut self, budget: crate::limits::RateLimit) -> Self {
        self.refusals = Some(RefusalBudget::new(budget));
        self
    }

    /// Turns the refusal budget off: every refusal costs verification.
    pub fn without_refusal_budget(mut self) -> Self {
        self.refusals = None;
        self
    }

    /// Enforces the token revocation list read with `settings` (a list that
    /// is not read is empty and never stale).
    pub fn with_revocations(mut self, settings: super::revocation::RevocationSettings) -> Self {
        self.revocations =
            std::sync::Arc::new(super::revocation::RevocationList::new(Some(settings)));
        self
    }

    /// The token revocation list this authenticator enforces.
    pub fn revocations(&self) -> &std::sync::Arc<super::revocation::RevocationList> {
        &self.revocations
    }

    /// Which allowed calls get an audit event too (refusals always do).
    pub fn with_audit_allowed(mut self, audit: AuditAllowed) -> Self {
        self.audit_allowed = audit;
        self
    }

    /// Which allowed calls get an audit event.
    pub fn audits_allowed(&self) -> AuditAllowed {
        self.audit_allowed
    }

    /// The token verifier.
    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }

    /// Counts an allowed call of `caller`.
    pub(super) fn count_allowed(&self, caller: &Caller) {
        let kind = match caller.token.kind {
            CallerKind::User => 0,
            CallerKind::Machine => 1,
        };
        match self.allowed.get(&caller.token.issuer) {
            Some(counters) => counters[kind].inc(),
            // Not reached: a verified token's issuer is configured.
            None => crate::metrics::metrics()
                .auth_decisions
                .with_label_values(&[
                    "allow",
                    "ok",
                    &caller.token.issuer,
                    ["user", "machine"][kind],
                ])
                .inc(),
        }
    }

    /// Decides one call. `Ok(None)`: a public method, no token needed.
    pub async fn authorize(
        &self,
        path: &str,
        headers: &HeaderMap,
        conn: Option<&ConnInfo>,
    ) -> Result<Option<Caller>, AuthError> {
        let conn = conn.ok_or(AuthError::NoPeerCertificate)?;
        let identity = conn.peer.identity();
        if !self.allowed_identities.is_empty() && !self.allowed_identities.contains(identity) {
            return Err(AuthError::IdentityNotAllowed(conn.peer.name().to_owned()));
        }
        let access = Access::of_path(path);
        if access == Access::Public {
            return Ok(None);
        }
        // The token's bytes are checked only on a cache miss: those of a
        // token verified before are well-formed. A cached token is never
        // charged to nor refused by the refusal budget.
        let token = bearer_token(headers)?;
        let verified = match self.verifier.cached(token) {
            Some(verified) => verified,
            None => self.verify_under_budget(token, conn).await?,
        };
        // Cached or not: a revoked token is refused from the next read of
        // the list on.
        self.revocations.check(&verified)?;
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
        if !binding_allows(
            &self.bindings,
            &self.bound_clients,
            identity,
            &verified.client_id,
        ) {
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
        let owner = owner_of(
            &policy.owner_prefix,
            &verified.subject,
            self.namespaced_owners,
        )?;
        // Only an allowed call counts as the token's first on this
        // connection: a refused one leaves the next read audited.
        let audited = self.audit_allowed.covers(access == Access::Read, || {
            conn.audit_memory.is_new(TokenMark::of(token))
        });
        Ok(Some(Caller {
            audited,
            owner,
            token: verified,
            peer: conn.peer.clone(),
        }))
    }
}

impl Authenticator {
    /// Verifies a token the cache does not know, under the connection's
    /// refusal budget: refused unverified when the budget is spent, charged
    /// when verification fails.
    async fn verify_under_budget(
        &self,
        token: &[u8],
        conn: &ConnInfo,
    ) -> Result<std::sync::Arc<super::VerifiedToken>, AuthError> {
        let text = token_text(token)?;
        let Some(budget) = &self.refusals else {
            return self.verifier.verify_afresh(text).await;
        };
        let identity = conn.peer.identity_text();
        let refusals = &conn.share.refusals;
        let Some(reservation) = budget.reserve(refusals, identity, std::time::Instant::now())
        else {
            return Err(AuthError::TooManyRefusals);
        };
        let verified = self.verifier.verify_afresh(text).await;
        match &verified {
            // Keys not loaded is the server's failure, not the caller's.
            Ok(_) | Err(AuthError::KeysUnavailable) => {
                budget.release(refusals, identity, reservation)
            }
            Err(_) => budget.spend(refusals, identity, reservation, std::time::Instant::now()),
        }
        verified
    }
}

/// Whether a certificate of `identity` may present a token of `client`:
/// an identity with a binding only its bound clients' tokens, and a bound
/// client's tokens only over the identities bound to it (`bound_clients`:
/// every client some binding names).
fn binding_allows(
    bindings: &Bindings,
    bound_clients: &BTreeSet<String>,
    identity: &Identity,
    client: &str,
) -> bool {
    match bindings.get(identity) {
        Some(clients) => clients.contains(client),
        None => !bound_clients.contains(client),
    }
}

/// The owner of a token's notes: its pool's prefix and its `sub`. Where
/// pools share the table (`namespaced`), a pool without a prefix may not
/// have subjects with `:`, which prefixed owners use, so no two pools'
/// owners are ever equal.
fn owner_of(prefix: &str, subject: &str, namespaced: bool) -> Result<String, AuthError> {
    if prefix.is_empty() && namespaced && subject.contains(':') {
        return Err(AuthError::ReservedSubject);
    }
    // `#…` partitions are the store's own (the revocation list).
    if prefix.is_empty() && subject.starts_with('#') {
        return Err(AuthError::ReservedSubject);
    }
    Ok([prefix, subject].concat())
}

/// The token of the single `authorization: Bearer <token>` entry: what
/// follows the scheme and its spaces (or tabs), up to trailing whitespace.
/// Not empty; its bytes are not checked ([`token_text`] does).
fn bearer_token(headers: &HeaderMap) -> Result<&[u8], AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingToken)?;
    if values.next().is_some() {
        return Err(AuthError::MalformedAuthorization);
    }
    let token = match value.as_bytes().split_at_checked(6) {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case(b"bearer") && rest.starts_with(b" ") =>
        {
            rest.trim_ascii()
        }
        _ => return Err(AuthError::MalformedAuthorization),
    };
    if token.is_empty() {
        return Err(AuthError::MalformedAuthorization);
    }
    Ok(token)
}

/// A bearer token's bytes as text: visible ASCII only, no spaces.
fn token_text(token: &[u8]) -> Result<&str, AuthError> {
    if !visible_ascii(token) {
        return Err(AuthError::MalformedAuthorization);
    }
    // All ASCII, so this cannot fail.
    std::str::from_utf8(token).map_err(|_| AuthError::MalformedAuthorization)
}

/// Whether every byte is visible ASCII (`!` to `~`): what a token is made
/// of. Without an early exit, so the compiler checks many bytes at once
/// (a token is about 1 KB).
fn visible_ascii(bytes: &[u8]) -> bool {
    bytes.iter().fold(true, |visible, &b| {
        visible & (b.wrapping_sub(b'!') <= b'~' - b'!')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_audits_all_but_repeated_reads_with_one_token_on_one_connection() {
        use clap::ValueEnum;
        let parse = |s| AuditAllowed::from_str(s, false).unwrap();
        assert_eq!(parse("true"), AuditAllowed::All);
        assert_eq!(parse("false"), AuditAllowed::None);
        assert_eq!(parse("changes"), AuditAllowed::default());
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(AUTHORIZATION, value.parse().unwrap());
        }
        map
    }

    /// The token `values` carry, as the call path reads it on a cache miss.
    fn token_of(values: &[&str]) -> Result<String, AuthError> {
        let map = headers(values);
        bearer_token(&map).and_then(token_text).map(str::to_owned)
    }

    #[test]
    fn exactly_one_bearer_token_is_accepted() {
        let ok = |token: &str| Ok(token.to_owned());
        assert_eq!(token_of(&["Bearer abc"]), ok("abc"));
        assert_eq!(token_of(&["bearer abc"]), ok("abc"));
        assert_eq!(token_of(&["BEARER  \tabc\t "]), ok("abc"));
        assert_eq!(token_of(&["Bearer ~a.b-c_!"]), ok("~a.b-c_!"));
        assert_eq!(token_of(&[]), Err(AuthError::MissingToken));
        for bad in [
            &["Basic abc"][..],
            &["Bearer"],
            &["Bearer "],
            &["Bearerabc"],
            &["Bearer\tabc"],
            &["Bearers abc"],
            &["Bearer a b"],
            &["Bearer a\tb"],
            &["Bearer a", "Bearer b"],
        ] {
            assert_eq!(
                token_of(bad),
                Err(AuthError::MalformedAuthorization),
                "{bad:?}"
            );
        }
    }

    proptest::proptest! {
        /// Bindings hold both ways: a bound identity presents only its
        /// clients' tokens, and a bound client's tokens travel only over
        /// the identities bound to it; nothing else is restricted.
        #[test]
        fn bindings_hold_both_ways(
            bindings in proptest::collection::btree_map(
                "[a-c]",
                proptest::collection::btree_set("[w-z]", 0..3),
                0..3,
            ),
            identity in "[a-d]",
            client in "[w-z]",
        ) {
            let map: Bindings = bindings
                .iter()
                .map(|(id, clients)| (Identity::Uri(id.clone()), clients.clone()))
                .collect();
            let bound: BTreeSet<String> = map.values().flatten().cloned().collect();
            let allowed = binding_allows(&map, &bound, &Identity::Uri(identity.clone()), &client);
            let identity_bound = bindings.get(&identity);
            let client_bound_to: Vec<&String> = bindings
                .iter()
                .filter(|(_, clients)| clients.contains(&client))
                .map(|(id, _)| id)
                .collect();
            let expected = identity_bound.is_none_or(|clients| clients.contains(&client))
                && (client_bound_to.is_empty() || client_bound_to.contains(&&identity));
            proptest::prop_assert_eq!(allowed, expected);
        }

        /// Owners of two pools never collide: with distinct `name:`
        /// prefixes (the first pool may have none), equal owners mean the
        /// same pool and the same subject.
        #[test]
        fn owners_of_different_pools_never_collide(
            prefixes in proptest::prop_oneof![
                proptest::strategy::Just(("", "pool2:")),
                proptest::strategy::Just(("pool1:", "pool2:")),
                proptest::strategy::Just(("pool2:", "")),
            ],
            a in "[a-z:2#]{0,8}",
            b in "[a-z:2#]{0,8}",
        ) {
            let (first, second) = prefixes;
            if let (Ok(x), Ok(y)) = (owner_of(first, &a, true), owner_of(second, &b, true)) {
                proptest::prop_assert_ne!(x, y, "{} {} / {} {}", first, a, second, b);
            }
            // No owner is one of the store's own `#` partitions.
            for owner in [owner_of(first, &a, true), owner_of(second, &b, true), owner_of("", &a, false)]
                .into_iter()
                .flatten()
            {
                proptest::prop_assert!(!owner.starts_with('#'), "{}", owner);
            }
            // One pool alone keeps its subjects as they are.
            if !a.starts_with('#') {
                proptest::prop_assert_eq!(owner_of("", &a, false), Ok(a.clone()));
            }
        }
    }
}
