//! A caller only ever sees and changes its own notes.

use notes_client::Error;
use tonic::Code;
use uuid::Uuid;

use crate::harness::{Backend, TestApp};

async fn another_users_note_answers_not_found_exactly_like_a_missing_one(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let alice = app.client_as("alice").await;
    let bob = app.client_as("bob").await;
    let note = alice.create("alice's secret", None).await.unwrap();
    let missing = Uuid::now_v7().to_string();

    let theirs = bob.get(&note.note_id).await.unwrap_err();
    let absent = bob.get(&missing).await.unwrap_err();

    assert_eq!(theirs.code(), Some(Code::NotFound));
    assert_eq!(absent.code(), Some(Code::NotFound));
    assert_eq!(
        theirs.to_string().replace(&note.note_id, "ID"),
        absent.to_string().replace(&missing, "ID")
    );
}

async fn another_user_cannot_update_or_delete_and_the_note_is_unchanged(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let alice = app.client_as("alice").await;
    let bob = app.client_as("bob").await;
    let note = alice.create("alice's", None).await.unwrap();

    let update = bob
        .update(&note.note_id, "bob was here", 0)
        .await
        .unwrap_err();
    let versioned = bob
        .update(&note.note_id, "bob was here", 1)
        .await
        .unwrap_err();
    let delete = bob.delete(&note.note_id, 0).await.unwrap_err();

    for err in [&update, &versioned, &delete] {
        assert!(matches!(err, Error::NotFound(_)), "{err}");
    }
    assert_eq!(alice.get(&note.note_id).await.unwrap(), note);
}

async fn listing_shows_only_the_callers_notes(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let alice = app.client_as("alice").await;
    let bob = app.client_as("bob").await;
    alice.create("a1", None).await.unwrap();
    alice.create("a2", None).await.unwrap();
    bob.create("b1", None).await.unwrap();

    let alices = alice.list(0, "").await.unwrap().notes;
    let bobs = bob.list(0, "").await.unwrap().notes;

    assert_eq!(
        alices
            .iter()
            .map(|n| n.content.as_str())
            .collect::<Vec<_>>(),
        ["a2", "a1"]
    );
    assert_eq!(
        bobs.iter().map(|n| n.content.as_str()).collect::<Vec<_>>(),
        ["b1"]
    );
    assert!(alices.iter().all(|n| n.user_id == "alice"));
}

async fn a_page_token_issued_to_one_user_is_refused_for_another(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let alice = app.client_as("alice").await;
    let bob = app.client_as("bob").await;
    for i in 0..3 {
        alice.create(&format!("a{i}"), None).await.unwrap();
    }
    let alices_token = alice.list(1, "").await.unwrap().next_page_token;

    let err = bob.list(1, &alices_token).await.unwrap_err();

    assert!(
        matches!(err, Error::InvalidArgument(ref m) if m.starts_with("page_token:")),
        "{err}"
    );
}

/// Cognito's subjects are UUIDs, all of one length: a page token is bound
/// to its owner's bytes, not only to their length.
async fn a_page_token_is_refused_for_another_user_whose_sub_has_the_same_length(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let alice_sub = "3f1c9a2e-8b7d-4e6f-a5c4-0d9e8f7a6b51";
    let bob_sub = "3f1c9a2e-8b7d-4e6f-a5c4-0d9e8f7a6b52";
    assert_eq!(alice_sub.len(), bob_sub.len());
    let alice = app.client_as(alice_sub).await;
    let bob = app.client_as(bob_sub).await;
    for i in 0..3 {
        alice.create(&format!("a{i}"), None).await.unwrap();
        bob.create(&format!("b{i}"), None).await.unwrap();
    }
    let alices_token = alice.list(1, "").await.unwrap().next_page_token;

    let err = bob.list(1, &alices_token).await.unwrap_err();
    let own = alice.list(1, &alices_token).await.unwrap();

    assert!(
        matches!(err, Error::InvalidArgument(ref m) if m.starts_with("page_token:")),
        "{err}"
    );
    assert!(own.notes.iter().all(|n| n.user_id == alice_sub));
}

async fn the_same_request_id_from_two_users_makes_two_notes(backend: Backend) {
    let app = TestApp::builder().store(backend).spawn().await;
    let alice = app.client_as("alice").await;
    let bob = app.client_as("bob").await;

    let a = alice.create("same", Some("shared-key")).await.unwrap();
    let b = bob.create("same", Some("shared-key")).await.unwrap();

    assert_ne!(a.note_id, b.note_id);
    assert_eq!(b.user_id, "bob");
}

conformance!(
    another_users_note_answers_not_found_exactly_like_a_missing_one,
    another_user_cannot_update_or_delete_and_the_note_is_unchanged,
    listing_shows_only_the_callers_notes,
    a_page_token_issued_to_one_user_is_refused_for_another,
    a_page_token_is_refused_for_another_user_whose_sub_has_the_same_length,
    the_same_request_id_from_two_users_makes_two_notes,
);
