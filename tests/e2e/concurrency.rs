//! Races that the store must settle atomically.

use futures_util::future::join_all;
use notes_client::Error;

use notes_api::pb::CreateNoteRequest;

use crate::harness::{Backend, TestApp, token_for, with_token};

const RACERS: usize = 12;

async fn concurrent_updates_at_one_version_let_exactly_one_win(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let note = client.clone().create("v1", None).await.unwrap();

    let results = join_all((0..RACERS).map(|i| {
        let client = client.clone();
        let id = note.note_id.clone();
        async move { client.update(&id, &format!("writer {i}"), 1).await }
    }))
    .await;

    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for result in &results {
        if let Err(err) = result {
            assert!(matches!(err, Error::Conflict(_)), "{err}");
        }
    }
    let stored = client.clone().get(&note.note_id).await.unwrap();
    assert_eq!(stored.version, 2);
    assert_eq!(&stored, winners[0]);
}

async fn concurrent_creates_with_one_request_id_make_exactly_one_note(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;

    let results = join_all((0..RACERS).map(|_| {
        let client = client.clone();
        async move { client.create("only once", Some("race-key")).await }
    }))
    .await;

    let notes = client.clone().list(0, "").await.unwrap().notes;
    assert_eq!(notes.len(), 1, "{notes:?}");
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(!ok.is_empty(), "{results:?}");
    for note in ok {
        assert_eq!(note.note_id, notes[0].note_id);
    }
    for result in &results {
        if let Err(err) = result {
            // A loser may be told to retry; it must never be told anything else.
            assert!(matches!(err, Error::Unavailable(_)), "{err}");
        }
    }
}

/// Without request ids, identical creates are distinct notes. Sent with the
/// raw stub: `NotesClient::create` always adds a request id.
async fn concurrent_creates_without_request_ids_are_all_kept(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let client = app.client_as("alice").await;
    let token = token_for("alice");

    let results = join_all((0..RACERS).map(|_| {
        let app = &app;
        let token = token.clone();
        async move {
            let request = CreateNoteRequest {
                content: "the same words".into(),
                request_id: String::new(),
            };
            app.raw()
                .await
                .create_note(with_token(request, &token))
                .await
                .unwrap()
                .into_inner()
        }
    }))
    .await;

    let mut listed: Vec<_> = client
        .clone()
        .list(0, "")
        .await
        .unwrap()
        .notes
        .into_iter()
        .map(|n| n.note_id)
        .collect();
    let mut created: Vec<_> = results.into_iter().map(|n| n.note_id).collect();
    listed.sort();
    created.sort();
    created.dedup();
    assert_eq!(created.len(), RACERS, "two creates answered with one note");
    assert_eq!(listed, created);
}

conformance!(
    concurrent_updates_at_one_version_let_exactly_one_win,
    concurrent_creates_with_one_request_id_make_exactly_one_note,
    concurrent_creates_without_request_ids_are_all_kept,
);
