//! Writes whose reply is lost on the way back from DynamoDB, so the server's
//! SDK sends them again: each must answer as if it had been applied once.
//! A proxy between the server and moto forwards the first write of one kind
//! and drops its answer.

use notes_api::pb::{CreateNoteRequest, DeleteNoteRequest};

use crate::harness::{
    Backend, TestApp, create_request, dynamodb_endpoint, net::LostReplyProxy, token_for, with_token,
};

/// A server on moto through a proxy that loses the first `operation` reply,
/// and a note to work on (created before the proxy starts dropping).
async fn server_losing(operation: &str) -> (TestApp, LostReplyProxy) {
    let proxy = LostReplyProxy::start(&dynamodb_endpoint(), operation).await;
    let app = TestApp::builder()
        .store(Backend::DynamoDbAt(proxy.endpoint.clone()))
        .spawn()
        .await;
    (app, proxy)
}

#[tokio::test]
async fn a_conditional_update_whose_reply_was_lost_answers_ok_once() {
    let (app, proxy) = server_losing("UpdateItem").await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();

    let updated = client.update(&note.note_id, "v2", 1).await;
    let stored = client.get(&note.note_id).await.unwrap();

    assert_eq!(proxy.dropped(), 1, "the reply was not dropped");
    let updated = updated.expect("answered as applied once, not ABORTED");
    assert_eq!((updated.version, updated.content.as_str()), (2, "v2"));
    assert_eq!(stored.version, 2);
}

#[tokio::test]
async fn an_unconditional_update_whose_reply_was_lost_is_applied_once() {
    let (app, proxy) = server_losing("UpdateItem").await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();

    let updated = client.update(&note.note_id, "v2", 0).await.unwrap();
    let stored = client.get(&note.note_id).await.unwrap();

    assert_eq!(proxy.dropped(), 1);
    assert_eq!(updated.version, 2);
    assert_eq!(stored.version, 2, "applied twice");
}

#[tokio::test]
async fn a_create_without_request_id_whose_reply_was_lost_makes_one_note_and_says_so() {
    let (app, proxy) = server_losing("PutItem").await;
    let token = token_for("alice");
    let request = CreateNoteRequest {
        request_id: String::new(),
        ..create_request("only once")
    };

    let created = app
        .raw()
        .await
        .create_note(with_token(request, &token))
        .await;
    let listed = app.client_as("alice").await.list(0, "").await.unwrap();

    assert_eq!(proxy.dropped(), 1);
    let created = created.expect("answered OK, not INTERNAL").into_inner();
    assert_eq!(listed.notes.len(), 1);
    assert_eq!(listed.notes[0].note_id, created.note_id);
}

#[tokio::test]
async fn a_delete_whose_reply_was_lost_answers_ok_and_the_note_is_gone() {
    let (app, proxy) = server_losing("DeleteItem").await;
    let client = app.client_as("alice").await;
    let note = client.create("doomed", None).await.unwrap();

    let deleted = app
        .raw()
        .await
        .delete_note(with_token(
            DeleteNoteRequest {
                note_id: note.note_id.clone(),
                expected_version: 1,
            },
            &token_for("alice"),
        ))
        .await;
    let after = client.get(&note.note_id).await;

    assert_eq!(proxy.dropped(), 1);
    assert!(deleted.is_ok(), "{deleted:?}");
    assert!(
        matches!(after, Err(notes_client::Error::NotFound(_))),
        "{after:?}"
    );
}
