//! Edges that must fail closed: several user pools never share an owner,
//! certificate bindings hold both ways, identities are typed.

use jsonwebtoken::Algorithm;
use notes_api::pb::{GetNoteRequest, ListNotesRequest};
use notes_server::{config::AuthSettings, tls::Identity};
use serde_json::json;
use tonic::Code;

use crate::harness::{
    CLIENT_ID, CLIENT_SPIFFE, ISSUER, TestApp, claims, cognito::auth_from_file, create_as, issuer,
    list_as, new_key, pki, sign, sign_with, test_policy, token_for, with_other_signature,
    with_token,
};

const SECOND_ISSUER: &str = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Second";
const SECOND_KID: &str = "second-pool-key";

/// An authenticator configured as an operator would: an auth file naming
/// the test issuer (no owner prefix) and a second pool (`pool2:`).
fn two_pools(dir: &std::path::Path, second: &jsonwebtoken::jwk::Jwk) -> AuthSettings {
    let write_jwks = |name: &str, keys: Vec<jsonwebtoken::jwk::Jwk>| {
        let path = dir.join(name);
        let set = jsonwebtoken::jwk::JwkSet { keys };
        std::fs::write(&path, serde_json::to_vec(&set).unwrap()).unwrap();
        path
    };
    let first = write_jwks("first.json", issuer().jwks.keys.clone());
    let second = write_jwks("second.json", vec![second.clone()]);
    let config = format!(
        r#"
[[issuer]]
issuer = "{ISSUER}"
jwks_file = "{first}"
client_ids = ["{CLIENT_ID}"]

[[issuer]]
issuer = "{SECOND_ISSUER}"
owner_prefix = "pool2:"
jwks_file = "{second}"
client_ids = ["{CLIENT_ID}"]
"#,
        first = first.display(),
        second = second.display(),
    );
    auth_from_file(dir, &config)
}

#[tokio::test]
async fn two_pools_signing_the_same_sub_never_see_each_others_notes() {
    let dir = tempfile::tempdir().unwrap();
    let (second_signer, second_jwk) = new_key(SECOND_KID);
    let app = TestApp::builder()
        .auth(two_pools(dir.path(), &second_jwk))
        .spawn()
        .await;
    let first = sign(&claims("same-sub"));
    let mut second_claims = claims("same-sub");
    second_claims["iss"] = json!(SECOND_ISSUER);
    let second = sign_with(Algorithm::RS256, SECOND_KID, &second_claims, &second_signer);

    let note = create_as(&app, &first).await.unwrap();
    create_as(&app, &first).await.unwrap();
    let mut stub = app.raw().await;
    let page = stub
        .list_notes(with_token(
            ListNotesRequest {
                page_size: 1,
                page_token: String::new(),
            },
            &first,
        ))
        .await
        .unwrap()
        .into_inner();
    let seen_by_second = stub
        .list_notes(with_token(ListNotesRequest::default(), &second))
        .await
        .unwrap()
        .into_inner();
    let get_by_second = stub
        .get_note(with_token(
            GetNoteRequest {
                note_id: note.note_id.clone(),
            },
            &second,
        ))
        .await
        .unwrap_err();
    let page_by_second = stub
        .list_notes(with_token(
            ListNotesRequest {
                page_size: 1,
                page_token: page.next_page_token.clone(),
            },
            &second,
        ))
        .await
        .unwrap_err();
    let second_note = create_as(&app, &second).await.unwrap();

    assert_eq!(
        note.user_id, "same-sub",
        "one pool's owners stay the plain sub"
    );
    assert_eq!(second_note.user_id, "pool2:same-sub");
    assert!(seen_by_second.notes.is_empty(), "{seen_by_second:?}");
    assert_eq!(get_by_second.code(), Code::NotFound, "{get_by_second:?}");
    assert_eq!(
        page_by_second.code(),
        Code::InvalidArgument,
        "{page_by_second:?}"
    );
    assert!(!page.next_page_token.is_empty());
}

#[tokio::test]
async fn a_plain_pools_sub_may_not_spell_another_pools_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (_, second_jwk) = new_key(SECOND_KID);
    let app = TestApp::builder()
        .auth(two_pools(dir.path(), &second_jwk))
        .spawn()
        .await;

    let status = list_as(&app, &sign(&claims("pool2:same-sub")))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("':'"), "{status:?}");
}

#[tokio::test]
async fn a_bound_clients_tokens_are_refused_over_any_other_certificate() {
    let policy = notes_server::auth::TokenPolicy::new(
        ISSUER,
        [CLIENT_ID.to_owned(), "reports-client".to_owned()],
    )
    .with_scopes(test_policy().scopes);
    let bindings = [(
        Identity::Uri("spiffe://notes.test/reports".into()),
        ["reports-client".to_owned()].into(),
    )]
    .into();
    let app = TestApp::builder()
        .policy(policy)
        .bindings(bindings)
        .spawn()
        .await;
    let mut stolen = claims("alice");
    stolen["client_id"] = json!("reports-client");

    // The billing certificate has no binding of its own, yet may not carry
    // the reports client's token: that client is bound to another identity.
    let status = list_as(&app, &sign(&stolen)).await.unwrap_err();
    let own = list_as(&app, &sign(&claims("alice"))).await;

    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(CLIENT_SPIFFE), "{status:?}");
    assert!(own.is_ok(), "{own:?}");
}

#[tokio::test]
async fn a_dns_name_spelling_an_allowed_uri_is_not_that_uri() {
    let impostor = pki()
        .ca
        .issue_client(
            &notes_server::certs::authority::Subject {
                common_name: "impostor".into(),
                dns_names: vec![CLIENT_SPIFFE.into()],
                ..Default::default()
            },
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
    let app = TestApp::builder()
        .allowed_identities([Identity::parse(CLIENT_SPIFFE).unwrap()])
        .spawn()
        .await;
    let token = sign(&claims("alice"));

    let status = notes_api::pb::notes_service_client::NotesServiceClient::new(
        app.channel(Some(&impostor)).await,
    )
    .list_notes(with_token(ListNotesRequest::default(), &token))
    .await
    .unwrap_err();
    let genuine = list_as(&app, &token).await;

    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(genuine.is_ok(), "{genuine:?}");
}

/// A unary call to any path, with the notes API's empty request.
async fn call_path(app: &TestApp, path: &'static str, token: Option<&str>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(app.channel(Some(&pki().client)).await);
    grpc.ready().await.unwrap();
    let request = match token {
        Some(token) => with_token(ListNotesRequest::default(), token),
        None => tonic::Request::new(ListNotesRequest::default()),
    };
    grpc.unary::<_, notes_api::pb::ListNotesResponse, _>(
        request,
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
    .expect_err("an unknown path answered")
}

/// An unknown path is refused UNAUTHENTICATED without a valid token (it
/// never reaches the router); with one, it is authenticated, audited, and
/// then UNIMPLEMENTED.
#[tokio::test]
async fn an_unknown_path_is_unauthenticated_without_a_valid_token() {
    let app = TestApp::spawn().await;
    let token = token_for("alice");
    let forged = with_other_signature(&token);
    for path in [
        "/notes.v1.NotesService/ExportEverything",
        "/notes.v2.NotesService/ListNotes",
        "/grpc.admin.v1/Shutdown",
    ] {
        for bad in [None, Some(forged.as_str())] {
            let status = call_path(&app, path, bad).await;
            assert_eq!(
                status.code(),
                tonic::Code::Unauthenticated,
                "{path}: {status:?}"
            );
        }
        let status = call_path(&app, path, Some(&token)).await;
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{path}: {status:?}"
        );
    }
}
