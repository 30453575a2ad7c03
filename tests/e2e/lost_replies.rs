//! Writes whose reply is lost on the way back from DynamoDB, so the server's
//! SDK sends them again: each must answer as if it had been applied once.
//! A proxy between the server and moto forwards the first write of one kind
//! and drops its answer.

use notes_api::pb::{CreateNoteRequest, DeleteNoteRequest};

use crate::harness::{
    Backend, TestApp, create_request, dynamodb_endpoint,
    net::{Fault, LostReplyProxy},
    token_for, with_token,
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

    assert!(
        proxy.requests() >= 2,
        "the write was not sent again: {}",
        proxy.requests()
    );
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

    assert!(
        proxy.requests() >= 2,
        "the write was not sent again: {}",
        proxy.requests()
    );
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

    assert!(
        proxy.requests() >= 2,
        "the write was not sent again: {}",
        proxy.requests()
    );
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

    assert!(
        proxy.requests() >= 2,
        "the write was not sent again: {}",
        proxy.requests()
    );
    assert!(deleted.is_ok(), "{deleted:?}");
    assert!(
        matches!(after, Err(notes_client::Error::NotFound(_))),
        "{after:?}"
    );
}

#[tokio::test]
async fn a_stalled_dynamodb_answers_unavailable_within_the_operation_timeout() {
    let proxy = LostReplyProxy::with_fault(&dynamodb_endpoint(), "GetItem", Fault::Stall).await;
    let app = TestApp::builder()
        .store(Backend::DynamoDbAt(proxy.endpoint.clone()))
        .spawn()
        .await;
    let client = app.client_as("alice").await;
    let note = client.create("stuck", None).await.unwrap();
    let mut stub = app.raw().await;

    let started = std::time::Instant::now();
    let status = stub
        .get_note(with_token(
            notes_api::pb::GetNoteRequest {
                note_id: note.note_id,
            },
            &token_for("alice"),
        ))
        .await
        .unwrap_err();
    let took = started.elapsed();

    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    // The harness's operation timeout is 3 s: the answer comes from the
    // server's own deadline, well before the client's (5 s).
    assert!(took < std::time::Duration::from_millis(4500), "{took:?}");
    assert!(proxy.requests() >= 1);
}

#[tokio::test]
async fn throttling_answers_unavailable_and_is_counted() {
    let proxy = LostReplyProxy::with_fault(&dynamodb_endpoint(), "Query", Fault::Throttle).await;
    let app = TestApp::builder()
        .store(Backend::DynamoDbAt(proxy.endpoint.clone()))
        .spawn()
        .await;

    let status = app
        .raw()
        .await
        .list_notes(with_token(
            notes_api::pb::ListNotesRequest::default(),
            &token_for("alice"),
        ))
        .await
        .unwrap_err();

    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        proxy.requests() >= 2,
        "the SDK did not retry the throttled call"
    );
    let text = notes_server::metrics::metrics().render();
    assert!(
        text.lines().any(
            |l| l.starts_with("notes_dynamodb_throttles_total{operation=\"Query\"}")
                && !l.ends_with(" 0")
        ),
        "{text}"
    );
}
