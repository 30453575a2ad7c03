//! Every call's token is verified before any handler runs; each kind of bad
//! token gets its own code and a message naming the failed check, never
//! echoing the token.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use notes_api::pb::ListNotesRequest;
use serde_json::{Value, json};
use tonic::{Code, Status};

use jsonwebtoken::jwk::{JwkSet, KeyAlgorithm};
use notes_server::auth::signer::TokenSigner;

use crate::harness::{
    self, CLIENT_ID, KID, READ, TestApp, claims, create_as, issuer, list_as, new_key, now, sign,
    sign_with, test_policy,
};

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// Checks the call failed with `code`, a message containing `fragment`, and
/// nothing of the token in the message; says what was wrong otherwise.
fn check_refused(
    result: Result<(), Status>,
    code: Code,
    fragment: &str,
    token: &str,
    case: &str,
) -> Result<(), String> {
    let status = match result {
        Ok(()) => return Err(format!("{case}: accepted")),
        Err(status) => status,
    };
    if status.code() != code {
        return Err(format!("{case}: {status:?}, expected {code:?}"));
    }
    if !status.message().contains(fragment) {
        return Err(format!("{case}: {:?} lacks {fragment:?}", status.message()));
    }
    if token
        .split('.')
        .filter(|p| p.len() > 8)
        .any(|part| status.message().contains(part))
    {
        return Err(format!("{case}: message echoes the token"));
    }
    Ok(())
}

/// Asserts what [`check_refused`] checks.
fn assert_refused(result: Result<(), Status>, code: Code, fragment: &str, token: &str, case: &str) {
    if let Err(failure) = check_refused(result, code, fragment, token, case) {
        panic!("{failure}");
    }
}

#[tokio::test]
async fn a_valid_token_is_accepted() {
    let app = TestApp::spawn().await;

    list_as(&app, &harness::token_for("alice")).await.unwrap();
    create_as(&app, &harness::token_for("alice")).await.unwrap();
}

#[tokio::test]
async fn a_call_without_a_token_is_unauthenticated() {
    let app = TestApp::spawn().await;

    let status = app
        .raw()
        .await
        .list_notes(ListNotesRequest::default())
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        status.message().contains("missing authorization"),
        "{status:?}"
    );
}

#[tokio::test]
async fn authorization_that_is_not_one_bearer_token_is_unauthenticated() {
    let app = TestApp::spawn().await;
    let token = harness::token_for("alice");

    for value in [
        format!("Basic {token}"),
        token.clone(),
        "Bearer ".into(),
        format!("Bearer {token} extra"),
    ] {
        let mut request = tonic::Request::new(ListNotesRequest::default());
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
        let result = app.raw().await.list_notes(request).await.map(|_| ());
        assert_refused(
            result,
            Code::Unauthenticated,
            "authorization",
            &token,
            &value,
        );
    }
    let mut request = tonic::Request::new(ListNotesRequest::default());
    let value: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    request
        .metadata_mut()
        .append("authorization", value.clone());
    request.metadata_mut().append("authorization", value);
    let result = app.raw().await.list_notes(request).await.map(|_| ());
    assert_refused(
        result,
        Code::Unauthenticated,
        "exactly one",
        &token,
        "two headers",
    );
}

/// A token with this header JSON and claims and a signature that does not
/// matter (the header is refused first).
fn with_header(header: Value, claims: &Value) -> String {
    format!("{}.{}.c2lnbmF0dXJl", b64(&header), b64(claims))
}

struct Case {
    name: &'static str,
    token: String,
    code: Code,
    fragment: &'static str,
}

fn refused(name: &'static str, token: String, fragment: &'static str) -> Case {
    Case {
        name,
        token,
        code: Code::Unauthenticated,
        fragment,
    }
}

/// The test issuer's key set plus a key that declares RS384 for itself.
fn keys_with_an_rs384_key() -> (JwkSet, TokenSigner) {
    let (rs384_key, mut rs384_jwk) = new_key("rs384-key");
    rs384_jwk.common.key_algorithm = Some(KeyAlgorithm::RS384);
    let mut set = issuer().jwks.clone();
    set.keys.push(rs384_jwk);
    (set, rs384_key)
}

#[tokio::test]
async fn each_kind_of_bad_token_gets_its_code_and_reason() {
    let (keys, rs384_key) = keys_with_an_rs384_key();
    let app = TestApp::builder().keys(test_policy(), &keys).spawn().await;
    let t = now();
    let good = claims("alice");
    let key = &issuer().signer;
    let valid = sign(&good);
    let parts: Vec<&str> = valid.split('.').collect();
    let (head, sig) = (parts[0], parts[2]);
    let rs256_header = json!({"alg": "RS256", "typ": "JWT", "kid": KID});
    let header_with = |name: &str, value: Value| {
        let mut header = rs256_header.clone();
        header[name] = value;
        header
    };
    let mut flipped = sig.to_owned().into_bytes();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).unwrap();
    let (other_pool_key, _) = new_key("pool-b-key");
    let other_pool = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_PoolB";

    let mut cases = vec![
        refused(
            "expired",
            sign(&with(
                with(good.clone(), "exp", json!(t - 3600)),
                "iat",
                json!(t - 7200),
            )),
            "expired",
        ),
        refused(
            "not yet valid",
            sign(&with(good.clone(), "nbf", json!(t + 3600))),
            "not yet valid",
        ),
        refused(
            "issued in the future",
            sign(&with(good.clone(), "iat", json!(t + 3600))),
            "issued in the future",
        ),
        refused("no exp", sign(&without(good.clone(), "exp")), "'exp'"),
        refused("no iss", sign(&without(good.clone(), "iss")), "'iss'"),
        refused(
            "wrong issuer",
            sign(&with(
                good.clone(),
                "iss",
                json!("https://evil.example/pool"),
            )),
            "issuer",
        ),
        refused(
            "another pool's token",
            sign_with(
                Algorithm::RS256,
                "pool-b-key",
                &with(good.clone(), "iss", json!(other_pool)),
                &other_pool_key,
            ),
            "issuer",
        ),
        refused(
            "our issuer, another pool's key",
            sign_with(Algorithm::RS256, KID, &good, &other_pool_key),
            "signature",
        ),
        refused(
            "another client_id",
            sign(&with(good.clone(), "client_id", json!("someone-else"))),
            "client_id",
        ),
        refused(
            "no client_id",
            sign(&without(good.clone(), "client_id")),
            "'client_id'",
        ),
        refused(
            "id token",
            sign(&with(
                with(good.clone(), "token_use", json!("id")),
                "aud",
                json!(CLIENT_ID),
            )),
            "token_use",
        ),
        refused(
            "refresh token_use",
            sign(&with(good.clone(), "token_use", json!("refresh"))),
            "token_use",
        ),
        refused(
            "no token_use",
            sign(&without(good.clone(), "token_use")),
            "'token_use'",
        ),
        refused("no sub", sign(&without(good.clone(), "sub")), "'sub'"),
        refused(
            "empty sub",
            sign(&with(good.clone(), "sub", json!(""))),
            "'sub'",
        ),
        refused(
            "exp of the wrong type",
            sign(&with(good.clone(), "exp", json!("tomorrow"))),
            "claims are malformed",
        ),
        refused(
            "sub of the wrong type",
            sign(&with(good.clone(), "sub", json!(42))),
            "claims are malformed",
        ),
        refused(
            "scope of the wrong type",
            sign(&with(good.clone(), "scope", json!(["notes/read"]))),
            "claims are malformed",
        ),
        refused(
            "iss of the wrong type",
            sign(&with(good.clone(), "iss", json!(7))),
            "claims are malformed",
        ),
        refused(
            "neither user nor client-credentials",
            sign(&without(good.clone(), "username")),
            "neither a user token nor a client-credentials token",
        ),
        refused(
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": KID})),
                b64(&good)
            ),
            "well-formed",
        ),
        refused(
            "HS256 signed with the public key",
            jsonwebtoken::encode(
                &Header {
                    kid: Some(KID.into()),
                    ..Header::new(Algorithm::HS256)
                },
                &good,
                &EncodingKey::from_secret(issuer().public_pem.as_bytes()),
            )
            .unwrap(),
            "HS256",
        ),
        refused(
            "RS384 when only RS256 is allowed",
            sign_with(Algorithm::RS384, KID, &good, key),
            "RS384",
        ),
        refused(
            "PS256",
            sign_with(Algorithm::PS256, KID, &good, key),
            "PS256",
        ),
        refused(
            "key declares another algorithm",
            sign_with(Algorithm::RS256, "rs384-key", &good, &rs384_key),
            "does not match",
        ),
        refused(
            "unknown kid",
            sign_with(Algorithm::RS256, "no-such-key", &good, key),
            "unknown",
        ),
        refused(
            "no kid",
            key.sign_with_header(&Header::new(Algorithm::RS256), &good)
                .unwrap(),
            "kid",
        ),
        refused(
            "tampered payload",
            format!(
                "{head}.{}.{sig}",
                b64(&with(good.clone(), "sub", json!("mallory")))
            ),
            "signature",
        ),
        refused(
            "tampered signature",
            format!("{head}.{}.{flipped}", parts[1]),
            "signature",
        ),
        refused(
            "jku header",
            with_header(
                header_with("jku", json!("https://evil.example/jwks")),
                &good,
            ),
            "'jku'",
        ),
        refused(
            "x5u header",
            with_header(
                header_with("x5u", json!("https://evil.example/cert")),
                &good,
            ),
            "'x5u'",
        ),
        refused(
            "embedded jwk header",
            with_header(
                header_with("jwk", serde_json::to_value(&issuer().jwks.keys[0]).unwrap()),
                &good,
            ),
            "'jwk'",
        ),
        refused(
            "x5c header",
            with_header(header_with("x5c", json!(["MIIB"])), &good),
            "'x5c'",
        ),
        refused(
            "two segments",
            format!("{head}.{}", b64(&good)),
            "well-formed",
        ),
        refused("four segments", format!("{valid}.{sig}"), "well-formed"),
        refused("not base64", "!!!.@@@.###".into(), "well-formed"),
        refused(
            "header not JSON",
            format!(
                "{}.{}.{sig}",
                URL_SAFE_NO_PAD.encode("not json"),
                b64(&good)
            ),
            "well-formed",
        ),
        refused(
            "payload not an object",
            sign(&json!([1, 2, 3])),
            "claims are malformed",
        ),
        refused(
            "oversize",
            sign(&with(good.clone(), "pad", json!("x".repeat(9000)))),
            "larger than",
        ),
        refused(
            "bound to another certificate",
            sign(&with(
                good.clone(),
                "cnf",
                json!({"x5t#S256": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
            )),
            "different client certificate",
        ),
    ];
    cases.push(Case {
        name: "no scopes",
        token: sign(&without(good.clone(), "scope")),
        code: Code::PermissionDenied,
        fragment: "lacks required scope",
    });
    assert!(cases.len() >= 40);

    // Every case is tried and every failure reported, not only the first.
    let mut failures = Vec::new();
    for case in &cases {
        let result = list_as(&app, &case.token).await;
        if let Err(failure) =
            check_refused(result, case.code, case.fragment, &case.token, case.name)
        {
            failures.push(failure);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_token_without_the_write_scope_can_read_but_not_write() {
    let app = TestApp::spawn().await;
    let token = sign(&with(claims("alice"), "scope", json!(READ)));

    list_as(&app, &token).await.unwrap();
    let result = create_as(&app, &token).await.map(|_| ());

    assert_refused(
        result,
        Code::PermissionDenied,
        "notes/write",
        &token,
        "read-only token",
    );
}

#[tokio::test]
async fn a_token_without_any_scope_can_neither_read_nor_write() {
    let app = TestApp::spawn().await;
    let token = sign(&without(claims("alice"), "scope"));

    assert_refused(
        list_as(&app, &token).await,
        Code::PermissionDenied,
        "notes/read",
        &token,
        "list",
    );
    assert_refused(
        create_as(&app, &token).await.map(|_| ()),
        Code::PermissionDenied,
        "notes/write",
        &token,
        "create",
    );
}

/// RS384 and RS512 verify once the issuer's policy lists them (and only
/// then: the refused case is in `each_kind_of_bad_token_gets_its_code_and_reason`).
#[tokio::test]
async fn rs384_and_rs512_are_accepted_when_enabled() {
    let mut policy = test_policy();
    policy.algorithms = vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
    // A key that states no `alg` of its own, so the policy alone decides.
    let (signer, mut jwk) = new_key("any-rs-key");
    jwk.common.key_algorithm = None;
    let mut set = issuer().jwks.clone();
    set.keys.push(jwk);
    let app = TestApp::builder().keys(policy, &set).spawn().await;
    for alg in [Algorithm::RS384, Algorithm::RS512] {
        let token = sign_with(alg, "any-rs-key", &claims("alice"), &signer);
        let listed = list_as(&app, &token).await;
        assert!(listed.is_ok(), "{alg:?}: {listed:?}");
    }
}
