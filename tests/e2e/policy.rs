//! Per-call policy beyond the token's validity: user and machine callers,
//! scopes per kind, groups, ID tokens, certificate-bound tokens, bindings
//! of certificates to app clients, refusal counters and the token cache.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use jsonwebtoken::Algorithm;
use notes_server::{
    auth::{
        AccessScopes, ScopePolicy, TokenPolicy, TokenVerifier,
        keys::{KeyError, KeySource, VerifyKey},
    },
    tls::{Identity, PeerIdentity},
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use serde_json::{Value, json};
use tonic::Code;

use crate::harness::{
    CLIENT_ID, CLIENT_SPIFFE, ISSUER, KID, TestApp, claims, create_as, issuer, list_as, metric_sum,
    now, pki, sign, sign_with, test_keys, test_policy,
};

const USER_SCOPE: &str = "aws.cognito.signin.user.admin";

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Claims of a client-credentials token: `sub` is the app client, no username.
fn machine_claims(scope: &str) -> Value {
    let mut c = claims(CLIENT_ID);
    c["scope"] = json!(scope);
    c.as_object_mut().unwrap().remove("username");
    c
}

async fn spawn(policy: TokenPolicy) -> TestApp {
    TestApp::builder().policy(policy).spawn().await
}

/// A user token (`username` set) with `scope`.
fn user_claims(scope: &str) -> Value {
    let mut c = claims("alice");
    c["scope"] = json!(scope);
    c
}

/// Each level requiring two scopes, as the flags set it.
fn two_scopes_from_flags(dir: &std::path::Path) -> notes_server::config::AuthSettings {
    notes_server::config::AuthArgs {
        auth_config: None,
        issuer: Some(ISSUER.to_owned()),
        jwks_url: None,
        jwks_file: Some(dir.join("jwks.json")),
        client_ids: vec![CLIENT_ID.to_owned()],
        read_scopes: vec!["notes/read".into(), "tenant/a".into()],
        write_scopes: vec!["notes/write".into(), "tenant/a".into()],
        token_leeway_secs: 60,
    }
    .settings()
    .unwrap()
}

/// Each level requiring two scopes, users and machines, as a TOML file sets it.
fn two_scopes_from_toml(dir: &std::path::Path) -> notes_server::config::AuthSettings {
    let config = format!(
        r#"
[[issuer]]
issuer = "{ISSUER}"
jwks_file = "{jwks}"
client_ids = ["{CLIENT_ID}"]
user_scopes = {{ read = ["notes/read", "tenant/a"], write = ["notes/write", "tenant/a"] }}
machine_scopes = {{ read = ["notes/read", "tenant/a"], write = ["notes/write", "tenant/a"] }}
"#,
        jwks = dir.join("jwks.json").display(),
    );
    crate::harness::cognito::auth_from_file(dir, &config)
}

/// "All required scopes": a token holding one of a level's two scopes is
/// refused, users and machines alike, whether the flags or a TOML file set
/// the scopes; one holding both is let through.
#[tokio::test]
async fn a_level_requiring_two_scopes_refuses_a_token_holding_only_one() {
    for (source, auth) in [
        ("flags", two_scopes_from_flags as fn(&std::path::Path) -> _),
        ("toml", two_scopes_from_toml),
    ] {
        let app = TestApp::builder()
            .settings(|s, dir| s.auth = auth(dir))
            .spawn()
            .await;
        for (kind, claims_with) in [
            ("user", user_claims as fn(&str) -> Value),
            ("machine", machine_claims),
        ] {
            for one in ["notes/read notes/write", "tenant/a"] {
                let status = list_as(&app, &sign(&claims_with(one))).await.unwrap_err();
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{source} {kind} {one}"
                );
            }
            list_as(&app, &sign(&claims_with("notes/read tenant/a")))
                .await
                .unwrap_or_else(|e| panic!("{source} {kind}: {e:?}"));
            let status = create_as(&app, &sign(&claims_with("notes/read tenant/a")))
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{source} {kind} write"
            );
            create_as(&app, &sign(&claims_with("notes/write tenant/a")))
                .await
                .unwrap_or_else(|e| panic!("{source} {kind} write: {e:?}"));
        }
    }
}

#[tokio::test]
async fn a_client_credentials_token_is_a_service_caller_that_owns_its_notes() {
    let app = TestApp::spawn().await;

    let note = create_as(&app, &sign(&machine_claims("notes/read notes/write")))
        .await
        .unwrap();

    assert_eq!(note.user_id, CLIENT_ID);
}

#[tokio::test]
async fn users_and_machines_are_held_to_their_own_scopes() {
    let policy = test_policy().with_scopes(ScopePolicy {
        user: AccessScopes {
            read: set(&[USER_SCOPE]),
            write: set(&[USER_SCOPE]),
        },
        machine: AccessScopes {
            read: set(&["notes/read"]),
            write: set(&["notes/write"]),
        },
    });
    let app = spawn(policy).await;
    let mut user = claims("alice");
    user["scope"] = json!(USER_SCOPE);

    create_as(&app, &sign(&user)).await.unwrap();
    create_as(&app, &sign(&machine_claims("notes/write")))
        .await
        .unwrap();
    let machine_with_user_scope = create_as(&app, &sign(&machine_claims(USER_SCOPE)))
        .await
        .unwrap_err();
    let machine_read_only = create_as(&app, &sign(&machine_claims("notes/read")))
        .await
        .unwrap_err();

    for status in [&machine_with_user_scope, &machine_read_only] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("notes/write"), "{status:?}");
    }
}

#[tokio::test]
async fn a_required_group_admits_only_its_members() {
    let mut policy = test_policy();
    policy.required_groups = set(&["notes-users"]);
    let app = spawn(policy).await;
    let mut member = claims("alice");
    member["cognito:groups"] = json!(["admins", "notes-users"]);
    let mut outsider = claims("bob");
    outsider["cognito:groups"] = json!(["admins"]);

    list_as(&app, &sign(&member)).await.unwrap();
    let no_groups = list_as(&app, &sign(&claims("carol"))).await.unwrap_err();
    let wrong_group = list_as(&app, &sign(&outsider)).await.unwrap_err();
    list_as(&app, &sign(&machine_claims("notes/read")))
        .await
        .unwrap();

    for status in [&no_groups, &wrong_group] {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("group"), "{status:?}");
    }
}

#[tokio::test]
async fn id_tokens_are_accepted_only_when_enabled_and_then_checked_with_aud() {
    let mut policy = TokenPolicy::new(ISSUER, [CLIENT_ID.to_owned()]);
    policy.accept_id_tokens = true;
    let app = spawn(policy).await;
    let id_token = |aud: &str| {
        let mut c = claims("alice");
        c["token_use"] = json!("id");
        c["aud"] = json!(aud);
        c["cognito:username"] = json!("alice");
        for claim in ["client_id", "scope", "username"] {
            c.as_object_mut().unwrap().remove(claim);
        }
        sign(&c)
    };

    create_as(&app, &id_token(CLIENT_ID)).await.unwrap();
    let other = create_as(&app, &id_token("another-client"))
        .await
        .unwrap_err();

    assert_eq!(other.code(), Code::Unauthenticated);
    assert!(other.message().contains("client_id"), "{other:?}");
}

#[tokio::test]
async fn a_certificate_bound_token_is_accepted_with_its_certificate() {
    let app = TestApp::spawn().await;
    let der = CertificateDer::from_pem_slice(pki().client.cert_pem.as_bytes()).unwrap();
    let thumbprint = PeerIdentity::from_der(&der).unwrap().x5t_s256;
    let mut bound = claims("alice");
    bound["cnf"] = json!({ "x5t#S256": thumbprint });

    create_as(&app, &sign(&bound)).await.unwrap();
}

#[tokio::test]
async fn a_certificate_may_present_only_the_tokens_of_its_bound_clients() {
    let policy = TokenPolicy::new(ISSUER, [CLIENT_ID.to_owned(), "reports-client".to_owned()]);
    let bindings = [(
        Identity::Uri(CLIENT_SPIFFE.to_owned()),
        set(&["reports-client"]),
    )]
    .into();
    let app = TestApp::builder()
        .policy(policy)
        .bindings(bindings)
        .spawn()
        .await;
    let mut reports = claims("alice");
    reports["client_id"] = json!("reports-client");

    list_as(&app, &sign(&reports)).await.unwrap();
    let status = list_as(&app, &sign(&claims("alice"))).await.unwrap_err();

    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains(CLIENT_SPIFFE), "{status:?}");
}

#[tokio::test]
async fn refusals_are_counted_by_reason() {
    let app = TestApp::spawn().await;
    let expired = {
        let mut c = claims("alice");
        c["exp"] = json!(now() - 3600);
        sign(&c)
    };

    let _ = list_as(&app, &expired).await;
    let _ = list_as(&app, &expired).await;
    let _ = list_as(&app, "garbage").await;
    list_as(&app, &sign(&claims("alice"))).await.unwrap();

    let denied = |reason: &str| {
        metric_sum(
            "notes_auth_decisions_total",
            &["result=\"deny\"", &format!("reason=\"{reason}\"")],
        )
    };
    assert_eq!(denied("expired"), 2.0);
    assert_eq!(denied("malformed"), 1.0);
    assert_eq!(
        metric_sum("notes_auth_decisions_total", &["result=\"deny\""]),
        3.0
    );
}

/// The test keys, counting how often a key is looked up for verification.
struct CountingKeys {
    inner: Arc<dyn KeySource>,
    lookups: AtomicUsize,
}

#[async_trait]
impl KeySource for CountingKeys {
    async fn key(&self, kid: &str) -> Result<Option<Arc<VerifyKey>>, KeyError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.inner.key(kid).await
    }

    fn cached_key(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        self.inner.cached_key(kid)
    }
}

#[tokio::test]
async fn a_reused_token_skips_signature_verification_until_it_expires() {
    let keys = Arc::new(CountingKeys {
        inner: test_keys(),
        lookups: AtomicUsize::new(0),
    });
    // The verifier's clock, in seconds; moved on by the test, not waited for.
    let clock_secs = Arc::new(std::sync::atomic::AtomicU64::new(now()));
    let read = clock_secs.clone();
    let verifier =
        TokenVerifier::new(test_policy(), keys.clone()).with_clock(Arc::new(move || {
            Duration::from_secs(read.load(Ordering::SeqCst))
        }));
    let mut short = claims("alice");
    short["exp"] = json!(now() + 2);
    let token = sign_with(Algorithm::RS256, KID, &short, &issuer().signer);

    for _ in 0..5 {
        verifier.verify(&token).await.unwrap();
    }
    let while_valid = keys.lookups.load(Ordering::SeqCst);
    clock_secs.fetch_add(3, Ordering::SeqCst);
    // Past `exp` the cache entry is gone; the 60 s leeway still admits it after full verification.
    verifier.verify(&token).await.unwrap();
    let past_exp = keys.lookups.load(Ordering::SeqCst);
    clock_secs.fetch_add(60, Ordering::SeqCst);
    // Past the leeway too: refused, however recently it was verified.
    let refused = verifier.verify(&token).await;

    assert_eq!(while_valid, 1);
    assert_eq!(past_exp, 2);
    assert_eq!(refused.unwrap_err(), notes_server::auth::AuthError::Expired);
}
