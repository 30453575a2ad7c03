//! Every call's token is verified before any handler runs; each kind of bad
//! token gets its own code and a message naming the failed check, never
//! echoing the token.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use notes_api::pb::{CreateNoteRequest, ListNotesRequest};
use serde_json::{Value, json};
use tonic::{Code, Status};

use crate::helpers::{self, CLIENT_ID, KID, READ, TestApp, claims, issuer, now, sign, with_token};

async fn list_with(app: &TestApp, token: &str) -> Result<(), Status> {
    app.raw()
        .await
        .list_notes(with_token(ListNotesRequest::default(), token))
        .await
        .map(|_| ())
}

async fn create_with(app: &TestApp, token: &str) -> Result<(), Status> {
    let request = CreateNoteRequest {
        content: "x".into(),
        request_id: String::new(),
    };
    app.raw()
        .await
        .create_note(with_token(request, token))
        .await
        .map(|_| ())
}

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

/// Asserts the call fails with `code`, a message containing `fragment`, and
/// nothing of the token in the message.
fn assert_refused(result: Result<(), Status>, code: Code, fragment: &str, token: &str, case: &str) {
    let status = result.expect_err(case);
    assert_eq!(status.code(), code, "{case}: {status:?}");
    assert!(
        status.message().contains(fragment),
        "{case}: {:?} lacks {fragment:?}",
        status.message()
    );
    for part in token.split('.').filter(|p| p.len() > 8) {
        assert!(
            !status.message().contains(part),
            "{case}: message echoes the token"
        );
    }
}

#[tokio::test]
async fn a_valid_token_is_accepted() {
    let app = TestApp::spawn().await;

    list_with(&app, &helpers::token_for("alice")).await.unwrap();
    create_with(&app, &helpers::token_for("alice"))
        .await
        .unwrap();
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
    let token = helpers::token_for("alice");

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

#[tokio::test]
async fn each_kind_of_bad_token_gets_its_code_and_reason() {
    let app = TestApp::spawn().await;
    let t = now();
    let good = claims("alice");
    let rs256 = |kid: Option<&str>, claims: &Value, key: &EncodingKey| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    };
    let valid = sign(&good);
    let (head, _, sig) = {
        let mut parts = valid.split('.');
        (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        )
    };
    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(KID.into());
        jsonwebtoken::encode(
            &header,
            &good,
            &EncodingKey::from_secret(issuer().public_pem.as_bytes()),
        )
        .unwrap()
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": KID})),
        b64(&good)
    );
    let tampered_payload = format!(
        "{head}.{}.{sig}",
        b64(&with(good.clone(), "sub", json!("mallory")))
    );
    let mut tampered_sig = sig.to_owned().into_bytes();
    tampered_sig[10] = if tampered_sig[10] == b'A' { b'B' } else { b'A' };
    let tampered_sig = format!(
        "{}.{}",
        &valid[..valid.rfind('.').unwrap()],
        String::from_utf8(tampered_sig).unwrap()
    );
    let jku_header = {
        let header =
            json!({"alg": "RS256", "kid": KID, "jku": "https://attacker.invalid/jwks.json"});
        format!("{}.{}.{sig}", b64(&header), b64(&good))
    };

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            sign(&with(
                with(good.clone(), "exp", json!(t - 3600)),
                "iat",
                json!(t - 7200),
            )),
            "expired",
        ),
        (
            "not yet valid",
            sign(&with(good.clone(), "nbf", json!(t + 3600))),
            "not yet valid",
        ),
        (
            "issued in the future",
            sign(&with(good.clone(), "iat", json!(t + 3600))),
            "issued in the future",
        ),
        ("no exp", sign(&without(good.clone(), "exp")), "'exp'"),
        (
            "wrong issuer",
            sign(&with(
                good.clone(),
                "iss",
                json!("https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Other"),
            )),
            "issuer",
        ),
        (
            "another client_id",
            sign(&with(good.clone(), "client_id", json!("someone-else"))),
            "client_id",
        ),
        (
            "no client_id",
            sign(&without(good.clone(), "client_id")),
            "'client_id'",
        ),
        (
            "id token",
            sign(&with(
                with(good.clone(), "token_use", json!("id")),
                "aud",
                json!(CLIENT_ID),
            )),
            "token_use",
        ),
        (
            "no token_use",
            sign(&without(good.clone(), "token_use")),
            "'token_use'",
        ),
        (
            "exp of the wrong type",
            sign(&with(good.clone(), "exp", json!("tomorrow"))),
            "'exp'",
        ),
        (
            "sub of the wrong type",
            sign(&with(good.clone(), "sub", json!(42))),
            "malformed",
        ),
        ("alg none", alg_none, "well-formed"),
        (
            "HS256 signed with the public key",
            hs256_with_public_key,
            "HS256",
        ),
        (
            "unknown kid",
            rs256(Some("no-such-key"), &good, &issuer().key),
            "unknown",
        ),
        ("no kid", rs256(None, &good, &issuer().key), "kid"),
        (
            "signed by another key",
            rs256(Some(KID), &good, &issuer().other_key),
            "signature",
        ),
        ("tampered payload", tampered_payload, "signature"),
        ("tampered signature", tampered_sig, "signature"),
        ("jku header", jku_header, "jku"),
        (
            "two segments",
            format!("{head}.{}", b64(&good)),
            "well-formed",
        ),
        ("four segments", format!("{valid}.{sig}"), "well-formed"),
        ("not base64", "!!!.@@@.###".into(), "well-formed"),
        (
            "payload not an object",
            sign(&json!([1, 2, 3])),
            "claims are malformed",
        ),
        (
            "oversize",
            sign(&with(good.clone(), "pad", json!("x".repeat(9000)))),
            "larger than",
        ),
    ];

    for (case, token, fragment) in &cases {
        let result = list_with(&app, token).await;
        assert_refused(result, Code::Unauthenticated, fragment, token, case);
    }
}

#[tokio::test]
async fn a_token_without_the_write_scope_can_read_but_not_write() {
    let app = TestApp::spawn().await;
    let token = sign(&with(claims("alice"), "scope", json!(READ)));

    list_with(&app, &token).await.unwrap();
    let result = create_with(&app, &token).await;

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
        list_with(&app, &token).await,
        Code::PermissionDenied,
        "notes/read",
        &token,
        "list",
    );
    assert_refused(
        create_with(&app, &token).await,
        Code::PermissionDenied,
        "notes/write",
        &token,
        "create",
    );
}
