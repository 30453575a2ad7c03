//! Against tokens issued by a real Cognito-compatible implementation: the
//! moto server's cognito-idp (the [`Pool`] fixture), verified through the key
//! set it serves. The server is configured through an `--auth-config` file
//! with two issuers: the moto pool (user tokens) and the test issuer
//! (client-credentials tokens).

use notes_api::pb::{GetNoteRequest, ListNotesRequest};
use serde_json::json;
use tonic::Code;

use crate::harness::{
    CLIENT_ID, TestApp, claims,
    cognito::{Pool, SERVICES_PREFIX, USER_SCOPE, auth_settings},
    create_request as create, sign, with_token,
};

#[tokio::test]
async fn users_signed_in_with_user_password_auth_manage_only_their_own_notes() {
    let pool = Pool::create().await;
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::builder()
        .auth(auth_settings(&pool, dir.path()))
        .spawn()
        .await;
    let (alice_sub, alice, _) = pool.sign_in("alice").await;
    let (_, bob, _) = pool.sign_in("bob").await;
    let mut raw = app.raw().await;

    let note = raw
        .create_note(with_token(create("from cognito"), &alice))
        .await
        .unwrap()
        .into_inner();
    let bobs_view = raw
        .get_note(with_token(
            GetNoteRequest {
                note_id: note.note_id.clone(),
            },
            &bob,
        ))
        .await
        .unwrap_err();
    let bobs_list = raw
        .list_notes(with_token(ListNotesRequest::default(), &bob))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(note.user_id, alice_sub);
    assert_eq!(bobs_view.code(), Code::NotFound);
    assert!(bobs_list.notes.is_empty());
}

#[tokio::test]
async fn the_pools_id_token_is_refused_where_an_access_token_is_required() {
    let pool = Pool::create().await;
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::builder()
        .auth(auth_settings(&pool, dir.path()))
        .spawn()
        .await;
    let (_, _, id_token) = pool.sign_in("carol").await;

    let status = app
        .raw()
        .await
        .list_notes(with_token(ListNotesRequest::default(), &id_token))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("token_use"), "{status:?}");
}

#[tokio::test]
async fn a_client_credentials_token_of_the_second_issuer_is_a_service_held_to_machine_scopes() {
    let pool = Pool::create().await;
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::builder()
        .auth(auth_settings(&pool, dir.path()))
        .spawn()
        .await;
    let machine = |scope: &str| {
        let mut c = claims(CLIENT_ID);
        c["scope"] = json!(scope);
        c.as_object_mut().unwrap().remove("username");
        sign(&c)
    };
    let mut raw = app.raw().await;

    let note = raw
        .create_note(with_token(
            create("from a service"),
            &machine("notes/read notes/write"),
        ))
        .await
        .unwrap()
        .into_inner();
    let with_user_scope = raw
        .create_note(with_token(create("nope"), &machine(USER_SCOPE)))
        .await
        .unwrap_err();

    // The second pool's owners carry its prefix: pools never share an owner.
    assert_eq!(note.user_id, format!("{SERVICES_PREFIX}{CLIENT_ID}"));
    assert_eq!(with_user_scope.code(), Code::PermissionDenied);
}
