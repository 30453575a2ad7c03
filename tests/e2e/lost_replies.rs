//! DynamoDB's faults, through a proxy between the server and moto: writes
//! whose reply is lost on the way back (the server sends them again, and
//! each must answer as if it had been applied once), a stalled DynamoDB,
//! throttling, denied access, unexpected errors, and listings DynamoDB cut
//! at 1 MB.

use notes_api::pb::{CreateNoteRequest, DeleteNoteRequest};

use crate::harness::{
    Backend, LogSink, TestApp, create_request, dynamodb_endpoint, metric_sum,
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
    let (app, proxy) = server_losing("UpdateItem").await;
    let client = app.client_as("alice").await;
    let note = client.create("doomed", None).await.unwrap();

    let deleted = app
        .raw()
        .await
        .delete_note(with_token(
            DeleteNoteRequest {
                note_id: note.note_id.clone(),
                expected_version: 1,
                request_id: String::new(),
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

/// A server on moto through a proxy doing `fault` to `operation`.
async fn server_with(operation: &str, fault: Fault) -> (TestApp, LostReplyProxy) {
    let proxy = LostReplyProxy::with_fault(&dynamodb_endpoint(), operation, fault).await;
    let app = TestApp::builder()
        .store(Backend::DynamoDbAt(proxy.endpoint.clone()))
        .spawn()
        .await;
    (app, proxy)
}

async fn raw_delete(app: &TestApp, note_id: &str) -> Result<(), tonic::Status> {
    app.raw()
        .await
        .delete_note(with_token(
            DeleteNoteRequest {
                note_id: note_id.to_owned(),
                expected_version: 1,
                request_id: String::new(),
            },
            &token_for("alice"),
        ))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_delete_throttled_once_is_sent_again_and_succeeds() {
    let (app, proxy) = server_with("UpdateItem", Fault::ThrottleFirst).await;
    let client = app.client_as("alice").await;
    let note = client.create("doomed", None).await.unwrap();

    let deleted = raw_delete(&app, &note.note_id).await;
    let after = client.get(&note.note_id).await;

    assert!(deleted.is_ok(), "{deleted:?}");
    assert_eq!(proxy.requests(), 2);
    assert!(
        matches!(after, Err(notes_client::Error::NotFound(_))),
        "{after:?}"
    );
}

#[tokio::test]
async fn a_delete_throttled_every_time_is_sent_three_times_then_answers_unavailable() {
    let (app, proxy) = server_with("UpdateItem", Fault::Throttle).await;
    let client = app.client_as("alice").await;
    let note = client.create("kept", None).await.unwrap();

    let status = raw_delete(&app, &note.note_id).await.unwrap_err();

    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(proxy.requests(), 3, "the server's delete attempts");
    assert_eq!(client.get(&note.note_id).await.unwrap().content, "kept");
}

#[tokio::test]
async fn denied_access_answers_internal_and_the_log_says_access_was_denied() {
    let (logs, _scope) = LogSink::capture("notes_server=error");
    let (app, proxy) = server_with("GetItem", Fault::Answer("AccessDeniedException")).await;
    let client = app.client_as("alice").await;
    let note = client.create("private", None).await.unwrap();

    let status = app
        .raw()
        .await
        .get_note(with_token(
            notes_api::pb::GetNoteRequest {
                note_id: note.note_id,
            },
            &token_for("alice"),
        ))
        .await
        .unwrap_err();

    // A deployment fault: INTERNAL (clients do not retry), no AWS detail.
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert_eq!(status.message(), "internal error");
    assert_eq!(proxy.requests(), 1, "denied access is not retried");
    let text = logs.text();
    assert!(text.contains("access to DynamoDB table"), "{text}");
    assert!(text.contains("was denied"), "{text}");
}

#[tokio::test]
async fn an_unexpected_dynamodb_error_is_internal_and_is_neither_denial_nor_throttling() {
    let (logs, _scope) = LogSink::capture("notes_server=error");
    let (app, _proxy) = server_with("GetItem", Fault::Answer("ValidationException")).await;
    let client = app.client_as("alice").await;
    let note = client.create("odd", None).await.unwrap();

    let status = app
        .raw()
        .await
        .get_note(with_token(
            notes_api::pb::GetNoteRequest {
                note_id: note.note_id,
            },
            &token_for("alice"),
        ))
        .await
        .unwrap_err();

    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    let text = logs.text();
    assert!(text.contains("DynamoDB request on"), "{text}");
    assert!(!text.contains("denied"), "{text}");
    assert!(metric_sum("notes_dynamodb_requests_total", &["GetItem", "\"error\""]) >= 1.0);
    assert_eq!(
        metric_sum("notes_dynamodb_throttles_total", &["GetItem"]),
        0.0
    );
}

#[tokio::test]
async fn a_refused_conditional_write_costs_one_request_counted_as_a_failed_condition() {
    let app = TestApp::builder().store(Backend::DynamoDb).spawn().await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();
    let reads_before = metric_sum("notes_dynamodb_requests_total", &["GetItem"]);

    let stale_update = client.update(&note.note_id, "v2", 7).await;
    let stale_delete = client.delete(&note.note_id, 7).await;

    assert!(
        matches!(stale_update, Err(notes_client::Error::Conflict(_))),
        "{stale_update:?}"
    );
    assert!(
        matches!(stale_delete, Err(notes_client::Error::Conflict(_))),
        "{stale_delete:?}"
    );
    // DynamoDB returned the item with the refusal: nothing is read again.
    assert_eq!(
        metric_sum("notes_dynamodb_requests_total", &["GetItem"]),
        reads_before
    );
    // A delete is an UpdateItem too (it leaves a tombstone).
    assert_eq!(
        metric_sum(
            "notes_dynamodb_requests_total",
            &["UpdateItem", "condition_failed"]
        ),
        2.0
    );
}

/// DynamoDB stops a Query at 1 MB of items and answers what it read with a
/// `LastEvaluatedKey` (moto never does: the proxy cuts its answers to two
/// items). A page is still filled from the continuation, nothing is lost or
/// repeated across pages, and each continuation asks only for what the
/// page still lacks.
#[tokio::test]
async fn a_listing_dynamodb_cuts_short_continues_where_it_stopped() {
    let proxy = LostReplyProxy::with_fault(&dynamodb_endpoint(), "Query", Fault::Cut(2)).await;
    let app = TestApp::builder()
        .store(Backend::DynamoDbAt(proxy.endpoint.clone()))
        .spawn()
        .await;
    let client = app.client_as("alice").await;
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(
            client
                .create(&format!("note {n}"), None)
                .await
                .unwrap()
                .note_id,
        );
    }

    let first = client.list(4, "").await.unwrap();
    let second = client.list(4, &first.next_page_token).await.unwrap();

    let ids = |page: &notes_api::pb::ListNotesResponse| -> Vec<String> {
        page.notes.iter().map(|n| n.note_id.clone()).collect()
    };
    assert_eq!(
        ids(&first).len(),
        4,
        "the first page was not filled: {first:?}"
    );
    assert!(!first.next_page_token.is_empty(), "the listing ended early");
    assert_eq!(ids(&second).len(), 1, "{second:?}");
    assert!(second.next_page_token.is_empty());
    let mut listed = [ids(&first), ids(&second)].concat();
    listed.sort();
    created.sort();
    assert_eq!(listed, created, "a note was lost or repeated");
    // Page 1: 5 asked (4 and one to tell whether a next page exists), 2
    // read; then 3; then 1. Page 2: 5, and 1 is all there is.
    // (The server's reads of the token revocation list, its own partition,
    // are not the listing's.)
    let limits: Vec<i64> = proxy
        .request_bodies()
        .iter()
        .filter(|body| body["ExpressionAttributeValues"][":u"]["S"] != "#revocations")
        .map(|body| body["Limit"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(limits, [5, 3, 1, 5]);
}
