//! The API contract for a single caller.

use futures_util::TryStreamExt;
use notes_client::Error;
use tonic::Code;
use uuid::Uuid;

use crate::harness::{Backend, TestApp};

async fn create_returns_a_version_1_note_with_a_uuidv7_owned_by_the_caller(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;

    let note = client.create("first note", None).await.unwrap();

    let id = Uuid::parse_str(&note.note_id).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(note.user_id, "alice");
    assert_eq!(note.content, "first note");
    assert_eq!(note.version, 1);
    assert_eq!(note.create_time, note.update_time);
    assert!(note.create_time.is_some());
}

async fn get_returns_what_create_stored(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let created = client.create("remember the milk", None).await.unwrap();

    let fetched = client.get(&created.note_id).await.unwrap();

    assert_eq!(fetched, created);
}

async fn update_replaces_content_and_bumps_the_version(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let created = client.create("v1", None).await.unwrap();

    let updated = client.update(&created.note_id, "v2", 1).await.unwrap();
    let again = client.update(&created.note_id, "v3", 0).await.unwrap();

    assert_eq!((updated.version, updated.content.as_str()), (2, "v2"));
    assert_eq!((again.version, again.content.as_str()), (3, "v3"));
    assert_eq!(again.create_time, created.create_time);
    assert_eq!(client.get(&created.note_id).await.unwrap(), again);
}

async fn update_with_a_stale_version_is_aborted_and_changes_nothing(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let note = client.create("original", None).await.unwrap();
    client.update(&note.note_id, "second", 1).await.unwrap();

    let err = client
        .update(&note.note_id, "lost update", 1)
        .await
        .unwrap_err();

    assert_eq!(err.code(), Some(Code::Aborted), "{err}");
    assert!(err.to_string().contains("version 2"), "{err}");
    let stored = client.get(&note.note_id).await.unwrap();
    assert_eq!((stored.version, stored.content.as_str()), (2, "second"));
}

async fn delete_with_a_wrong_version_is_aborted_and_the_note_survives(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let note = client.create("keep me", None).await.unwrap();

    let err = client.delete(&note.note_id, 5).await.unwrap_err();

    assert_eq!(err.code(), Some(Code::Aborted), "{err}");
    assert_eq!(client.get(&note.note_id).await.unwrap(), note);
}

async fn delete_removes_the_note(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let note = client.create("short-lived", None).await.unwrap();

    client.delete(&note.note_id, 1).await.unwrap();

    let err = client.get(&note.note_id).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    let err = client.delete(&note.note_id, 0).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

async fn a_retried_create_with_the_same_request_id_returns_the_first_note(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;

    let first = client.create("once", Some("req-123")).await.unwrap();
    let retry = client.create("once", Some("req-123")).await.unwrap();

    assert_eq!(retry, first);
    let page = client.list(0, "").await.unwrap();
    assert_eq!(page.notes.len(), 1);
}

async fn the_same_request_id_with_other_content_is_already_exists(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    client.create("once", Some("req-123")).await.unwrap();

    let err = client.create("twice", Some("req-123")).await.unwrap_err();

    assert!(
        matches!(err, Error::AlreadyExists(ref m) if m.contains("request_id")),
        "{err}"
    );
    assert_eq!(client.list(0, "").await.unwrap().notes.len(), 1);
}

async fn content_must_be_non_empty_and_at_most_64_kib(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;

    let empty = client.create("", None).await.unwrap_err();
    let too_big = client.create(&"x".repeat(65_537), None).await.unwrap_err();
    let max = client.create(&"é".repeat(32_768), None).await.unwrap();
    let update_big = client
        .update(&max.note_id, &"x".repeat(65_537), 0)
        .await
        .unwrap_err();

    for err in [&empty, &too_big, &update_big] {
        assert!(
            matches!(err, Error::InvalidArgument(m) if m.starts_with("content:")),
            "{err}"
        );
    }
    assert_eq!(max.content.len(), 65_536);
    assert_eq!(client.get(&max.note_id).await.unwrap().version, 1);
}

async fn a_note_id_that_is_not_a_uuid_is_invalid_argument(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;

    for bad in ["", "not-a-uuid", "0192", "../../etc/passwd"] {
        let err = client.get(bad).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(ref m) if m.starts_with("note_id:")),
            "{bad}: {err}"
        );
    }
    let err = client.update("nope", "x", 0).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = client.delete("nope", 0).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}

async fn a_missing_note_is_not_found(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;

    let err = client.get(&Uuid::now_v7().to_string()).await.unwrap_err();

    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

async fn a_negative_expected_version_is_invalid_argument(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let note = client.create("x", None).await.unwrap();

    let err = client.update(&note.note_id, "y", -1).await.unwrap_err();

    assert!(
        matches!(err, Error::InvalidArgument(ref m) if m.starts_with("expected_version:")),
        "{err}"
    );
}

async fn listing_over_four_pages_is_newest_first_with_no_duplicate_or_gap(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let mut created = Vec::new();
    for i in 0..11 {
        created.push(
            client
                .create(&format!("note {i}"), None)
                .await
                .unwrap()
                .note_id,
        );
    }

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client.list(3, &token).await.unwrap();
        pages += 1;
        assert!(page.notes.len() <= 3);
        seen.extend(page.notes.into_iter().map(|n| n.note_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }

    created.reverse();
    assert_eq!(seen, created);
    assert_eq!(pages, 4);
}

async fn a_listing_that_fills_its_last_page_exactly_ends_there(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    for i in 0..6 {
        client.create(&format!("n{i}"), None).await.unwrap();
    }

    let first = client.list(3, "").await.unwrap();
    let second = client.list(3, &first.next_page_token).await.unwrap();

    assert_eq!(first.notes.len(), 3);
    assert!(!first.next_page_token.is_empty());
    assert_eq!(second.notes.len(), 3);
    assert!(second.next_page_token.is_empty(), "no empty third page");
}

async fn page_size_defaults_to_50_and_is_capped_at_100(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    for i in 0..101 {
        client.create(&format!("n{i}"), None).await.unwrap();
    }

    let default = client.list(0, "").await.unwrap();
    let capped = client.list(1000, "").await.unwrap();
    let negative = client.list(-1, "").await.unwrap_err();

    assert_eq!(default.notes.len(), 50);
    assert_eq!(capped.notes.len(), 100);
    assert!(!capped.next_page_token.is_empty());
    assert!(
        matches!(negative, Error::InvalidArgument(ref m) if m.starts_with("page_size:")),
        "{negative}"
    );
}

async fn a_garbage_or_tampered_page_token_is_invalid_argument(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    for i in 0..3 {
        client.create(&format!("n{i}"), None).await.unwrap();
    }
    let token = client.list(1, "").await.unwrap().next_page_token;
    let mut tampered = token.clone().into_bytes();
    tampered[5] = if tampered[5] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    for bad in [
        "garbage",
        "%%%",
        tampered.as_str(),
        &token[..token.len() - 2],
    ] {
        let err = client.list(1, bad).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(ref m) if m.starts_with("page_token:")),
            "{bad}: {err}"
        );
    }
    assert_eq!(client.list(1, &token).await.unwrap().notes.len(), 1);
}

conformance!(
    a_listing_that_fills_its_last_page_exactly_ends_there,
    create_returns_a_version_1_note_with_a_uuidv7_owned_by_the_caller,
    get_returns_what_create_stored,
    update_replaces_content_and_bumps_the_version,
    update_with_a_stale_version_is_aborted_and_changes_nothing,
    delete_with_a_wrong_version_is_aborted_and_the_note_survives,
    delete_removes_the_note,
    a_retried_create_with_the_same_request_id_returns_the_first_note,
    the_same_request_id_with_other_content_is_already_exists,
    content_must_be_non_empty_and_at_most_64_kib,
    a_note_id_that_is_not_a_uuid_is_invalid_argument,
    a_missing_note_is_not_found,
    a_negative_expected_version_is_invalid_argument,
    listing_over_four_pages_is_newest_first_with_no_duplicate_or_gap,
    page_size_defaults_to_50_and_is_capped_at_100,
    a_garbage_or_tampered_page_token_is_invalid_argument,
);

#[tokio::test]
async fn a_page_of_large_notes_fits_a_default_grpc_client_and_continues() {
    let app = TestApp::spawn().await;
    let client = app.client_as("hoarder").await;
    let big = "n".repeat(65_536);
    for i in 0..100 {
        client
            .create(&format!("{i:03}{}", &big[3..]), None)
            .await
            .unwrap();
    }

    // The project's client receives at most tonic's default 4 MiB per message.
    let page = client.list(100, "").await.expect("a full page fits 4 MiB");
    let all: Vec<_> = client.list_all(100).try_collect().await.unwrap();

    assert!(
        page.notes.len() < 100,
        "{} notes in one page",
        page.notes.len()
    );
    assert!(!page.next_page_token.is_empty());
    assert_eq!(all.len(), 100);
}
