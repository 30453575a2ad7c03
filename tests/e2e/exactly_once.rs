//! Every write takes effect once, even when retries, other writers and a
//! faulty network interleave: the three histories a robustness run found
//! (replayed exactly, through a proxy that loses or holds DynamoDB requests
//! while a second store on the same table writes), and `request_id` on
//! UpdateNote and DeleteNote on both stores. The randomised version of
//! these histories is `robustness`.

use std::{sync::Arc, time::SystemTime};

use notes_api::pb::{DeleteNoteRequest, UpdateNoteRequest};
use notes_client::Error;
use notes_server::{
    startup,
    store::{Change, NoteStore},
};
use tonic::Code;
use uuid::Uuid;

use crate::harness::{
    Backend, TestApp, dynamodb_config, dynamodb_endpoint,
    net::{Fault, LostReplyProxy},
    token_for, with_token,
};

/// A server whose UpdateItems pass a proxy doing `fault`, and a second
/// store on the same table reached directly: another instance's writes.
async fn server_and_other_writer(fault: Fault) -> (TestApp, LostReplyProxy, Arc<dyn NoteStore>) {
    let proxy = LostReplyProxy::with_fault(&dynamodb_endpoint(), "UpdateItem", fault).await;
    let config = dynamodb_config(proxy.endpoint.clone());
    let faulty = startup::dynamodb_store(&config).await.unwrap();
    faulty
        .init_table(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let direct = notes_server::config::DynamoConfig {
        dynamodb_endpoint: Some(dynamodb_endpoint()),
        ..config
    };
    let other = startup::dynamodb_store(&direct).await.unwrap();
    let app = TestApp::builder()
        .store_impl(Arc::new(faulty))
        .spawn()
        .await;
    (app, proxy, Arc::new(other))
}

/// Waits until `n` UpdateItems reached the proxy.
async fn until_requests(proxy: &LostReplyProxy, n: usize) {
    for _ in 0..500 {
        if proxy.requests() >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("only {} requests reached the proxy", proxy.requests());
}

fn unconditional() -> Change {
    Change {
        expected_version: None,
        request_id: None,
        now: SystemTime::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_another_writers_update_does_not_apply_an_update_twice() {
    let (app, proxy, other) = server_and_other_writer(Fault::LoseReplyThenHoldRetry).await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();
    let id = Uuid::parse_str(&note.note_id).unwrap();

    let mine = {
        let client = client.clone();
        let note_id = note.note_id.clone();
        tokio::spawn(async move { client.update(&note_id, "mine", 0).await })
    };
    // Attempt 1 was applied (v2) and its reply lost; the retry is held
    // while another instance writes v3.
    until_requests(&proxy, 2).await;
    let theirs = other
        .update("alice", id, "theirs".into(), unconditional())
        .await
        .unwrap();
    proxy.release().await;
    let mine = mine.await.unwrap().expect("the first outcome");
    let stored = client.get(&note.note_id).await.unwrap();

    assert_eq!((mine.version, mine.content.as_str()), (2, "mine"));
    assert_eq!(theirs.version, 3);
    assert_eq!(
        (stored.version, stored.content.as_str()),
        (3, "theirs"),
        "the update was applied twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_update_that_was_applied_answers_ok_even_after_another_write() {
    let (app, proxy, other) = server_and_other_writer(Fault::LoseReplyThenHoldRetry).await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();
    let id = Uuid::parse_str(&note.note_id).unwrap();

    let mine = {
        let client = client.clone();
        let note_id = note.note_id.clone();
        tokio::spawn(async move { client.update(&note_id, "mine at 1", 1).await })
    };
    until_requests(&proxy, 2).await;
    other
        .update("alice", id, "theirs".into(), unconditional())
        .await
        .unwrap();
    proxy.release().await;
    let mine = mine.await.unwrap();

    let mine = mine.expect("applied, so OK and not ABORTED");
    assert_eq!((mine.version, mine.content.as_str()), (2, "mine at 1"));
    assert_eq!(client.get(&note.note_id).await.unwrap().version, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_delivered_after_later_writes_does_not_overwrite_them() {
    let (app, proxy, _other) = server_and_other_writer(Fault::DeliverLate).await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();

    // Attempt 1 is held in the network; the server times out, retries
    // and is answered; then a later write is acknowledged.
    let old = client.update(&note.note_id, "old", 0).await.unwrap();
    let newer = client.update(&note.note_id, "newer", 0).await.unwrap();
    proxy.release().await;
    let stored = client.get(&note.note_id).await.unwrap();

    assert_eq!((old.version, newer.version), (2, 3));
    assert_eq!(
        (stored.version, stored.content.as_str()),
        (3, "newer"),
        "the late request overwrote an acknowledged write"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_delivered_late_changes_nothing_and_a_second_delete_finds_nothing() {
    let (app, proxy, other) = server_and_other_writer(Fault::DeliverLate).await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();
    let id = Uuid::parse_str(&note.note_id).unwrap();

    // The first attempt is held; the server's retry deletes; the held
    // attempt, delivered later, finds its own key on the tombstone.
    client.delete(&note.note_id, 1).await.unwrap();
    proxy.release().await;
    let again = other.delete("alice", id, unconditional()).await;

    assert!(
        matches!(again, Err(notes_server::store::StoreError::NotFound(_))),
        "{again:?}"
    );
}

async fn raw_update(
    app: &TestApp,
    note_id: &str,
    content: &str,
    expected_version: i64,
    request_id: &str,
) -> Result<notes_api::pb::Note, tonic::Status> {
    app.raw()
        .await
        .update_note(with_token(
            UpdateNoteRequest {
                note_id: note_id.into(),
                content: content.into(),
                expected_version,
                request_id: request_id.into(),
            },
            &token_for("alice"),
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn raw_delete(app: &TestApp, note_id: &str, request_id: &str) -> Result<(), tonic::Status> {
    app.raw()
        .await
        .delete_note(with_token(
            DeleteNoteRequest {
                note_id: note_id.into(),
                expected_version: 0,
                request_id: request_id.into(),
            },
            &token_for("alice"),
        ))
        .await
        .map(|_| ())
}

async fn an_update_repeated_with_its_request_id_answers_the_first_outcome(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();

    let first = raw_update(&app, &note.note_id, "v2", 1, "req-7")
        .await
        .unwrap();
    let later = client.update(&note.note_id, "v3", 0).await.unwrap();
    let repeat = raw_update(&app, &note.note_id, "v2", 1, "req-7").await;

    assert_eq!(repeat.expect("the first outcome, not ABORTED"), first);
    assert_eq!(later.version, 3);
    assert_eq!(client.get(&note.note_id).await.unwrap().version, 3);
}

async fn a_request_id_reused_for_another_update_is_already_exists(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();
    raw_update(&app, &note.note_id, "v2", 0, "req-8")
        .await
        .unwrap();

    let other_content = raw_update(&app, &note.note_id, "other", 0, "req-8")
        .await
        .unwrap_err();
    let other_version = raw_update(&app, &note.note_id, "v2", 2, "req-8")
        .await
        .unwrap_err();
    let as_delete = raw_delete(&app, &note.note_id, "req-8").await.unwrap_err();

    for status in [&other_content, &other_version, &as_delete] {
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert!(status.message().contains("req-8"), "{status:?}");
    }
    assert_eq!(client.get(&note.note_id).await.unwrap().version, 2);
}

async fn a_delete_repeated_with_its_request_id_answers_ok(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let note = client.create("doomed", None).await.unwrap();

    let first = raw_delete(&app, &note.note_id, "del-1").await;
    let repeat = raw_delete(&app, &note.note_id, "del-1").await;
    let without_id = raw_delete(&app, &note.note_id, "").await.unwrap_err();
    let got = client.get(&note.note_id).await;

    assert!(first.is_ok(), "{first:?}");
    assert!(
        repeat.is_ok(),
        "the first outcome, not NOT_FOUND: {repeat:?}"
    );
    assert_eq!(without_id.code(), Code::NotFound);
    assert!(matches!(got, Err(Error::NotFound(_))), "{got:?}");
    assert!(client.list(0, "").await.unwrap().notes.is_empty());
}

async fn a_bad_request_id_on_update_or_delete_is_invalid_argument(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();

    let long = "x".repeat(129);
    let update = raw_update(&app, &note.note_id, "v2", 0, &long)
        .await
        .unwrap_err();
    let delete = raw_delete(&app, &note.note_id, "has space")
        .await
        .unwrap_err();

    for status in [update, delete] {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("request_id"), "{status:?}");
    }
    assert_eq!(client.get(&note.note_id).await.unwrap().version, 1);
}

/// A note written more often than its record of recent writes holds (so
/// the record is pruned and fenced several times) stays correct: each write
/// applies once, versions count every write, and a recent request id still
/// answers its first outcome.
async fn a_note_written_past_its_record_of_writes_keeps_counting_right(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();

    for n in 0..40 {
        let expected = if n % 2 == 0 { 0 } else { n + 1 };
        let written = raw_update(
            &app,
            &note.note_id,
            &format!("write {n}"),
            expected,
            &format!("r-{n}"),
        )
        .await
        .unwrap();
        assert_eq!(written.version, n + 2);
    }
    let repeat = raw_update(&app, &note.note_id, "write 39", 40, "r-39")
        .await
        .unwrap();
    let stored = client.get(&note.note_id).await.unwrap();

    assert_eq!(repeat.version, 41);
    assert_eq!((stored.version, stored.content.as_str()), (41, "write 39"));
}

conformance!(
    an_update_repeated_with_its_request_id_answers_the_first_outcome,
    a_request_id_reused_for_another_update_is_already_exists,
    a_delete_repeated_with_its_request_id_answers_ok,
    a_bad_request_id_on_update_or_delete_is_invalid_argument,
    a_note_written_past_its_record_of_writes_keeps_counting_right,
);
