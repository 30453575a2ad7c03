//! The client's retry rules, end to end over mutual TLS: a store that fails
//! on cue makes the real server answer UNAVAILABLE (or INTERNAL), and the
//! store counts what reached it. Get and List are retried; Create is
//! retried with one `request_id` for all its attempts, so a lost reply makes
//! exactly one note; Update and Delete are never sent twice; only
//! UNAVAILABLE is retried.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use notes_client::Error;
use notes_server::store::{Change, MemoryStore, NewNote, Note, NotePage, NoteStore, StoreError};
use uuid::Uuid;

use crate::harness::TestApp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Create,
    Get,
    List,
    Update,
    Delete,
}

/// What the next call of an operation meets.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Not applied; UNAVAILABLE.
    Unavailable,
    /// Applied, then UNAVAILABLE: the reply is lost on the way back.
    LostReply,
    /// Not applied; INTERNAL (not transient).
    Internal,
}

/// A memory store that fails on cue and counts every call that reaches it.
#[derive(Default)]
struct FaultyStore {
    inner: MemoryStore,
    faults: Mutex<HashMap<Op, VecDeque<Fault>>>,
    calls: Mutex<HashMap<Op, usize>>,
    request_ids: Mutex<Vec<Option<String>>>,
}

impl FaultyStore {
    fn fail_next(&self, op: Op, faults: &[Fault]) {
        self.faults
            .lock()
            .unwrap()
            .entry(op)
            .or_default()
            .extend(faults);
    }

    fn calls(&self, op: Op) -> usize {
        self.calls.lock().unwrap().get(&op).copied().unwrap_or(0)
    }

    /// Counts the call and says which fault, if any, it meets.
    fn enter(&self, op: Op) -> Option<Fault> {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
        self.faults
            .lock()
            .unwrap()
            .get_mut(&op)
            .and_then(VecDeque::pop_front)
    }

    async fn apply<T>(
        &self,
        op: Op,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let unavailable = || StoreError::Unavailable("injected: DynamoDB did not answer".into());
        match self.enter(op) {
            None => call.await,
            Some(Fault::Unavailable) => Err(unavailable()),
            Some(Fault::LostReply) => {
                call.await?;
                Err(unavailable())
            }
            Some(Fault::Internal) => Err(StoreError::Internal("injected".into(), None)),
        }
    }
}

#[async_trait]
impl NoteStore for FaultyStore {
    async fn create(&self, owner: &str, note: NewNote) -> Result<Note, StoreError> {
        self.request_ids
            .lock()
            .unwrap()
            .push(note.request_id.clone());
        self.apply(Op::Create, self.inner.create(owner, note)).await
    }

    async fn get(&self, owner: &str, note_id: Uuid) -> Result<Note, StoreError> {
        self.apply(Op::Get, self.inner.get(owner, note_id)).await
    }

    async fn list(
        &self,
        owner: &str,
        limit: usize,
        after: Option<Uuid>,
    ) -> Result<NotePage, StoreError> {
        self.apply(Op::List, self.inner.list(owner, limit, after))
            .await
    }

    async fn update(
        &self,
        owner: &str,
        note_id: Uuid,
        content: String,
        change: Change,
    ) -> Result<Note, StoreError> {
        self.apply(
            Op::Update,
            self.inner.update(owner, note_id, content, change),
        )
        .await
    }

    async fn delete(&self, owner: &str, note_id: Uuid, change: Change) -> Result<(), StoreError> {
        self.apply(Op::Delete, self.inner.delete(owner, note_id, change))
            .await
    }
}

async fn app_over(store: &Arc<FaultyStore>) -> TestApp {
    TestApp::builder()
        .store_impl(store.clone() as Arc<dyn NoteStore>)
        .spawn()
        .await
}

#[tokio::test]
async fn a_create_whose_reply_was_lost_is_retried_with_its_request_id_and_makes_one_note() {
    let store = Arc::new(FaultyStore::default());
    let app = app_over(&store).await;
    let client = app.client_as("alice").await;
    store.fail_next(Op::Create, &[Fault::LostReply]);

    let note = client.create("once", None).await.unwrap();

    assert_eq!(store.calls(Op::Create), 2, "the create was not retried");
    let ids = store.request_ids.lock().unwrap().clone();
    assert!(ids[0].is_some(), "the client sent no request_id");
    assert_eq!(ids[0], ids[1], "each attempt had its own request_id");
    let page = client.list(0, "").await.unwrap();
    assert_eq!(page.notes.len(), 1, "{:?}", page.notes);
    assert_eq!(page.notes[0].note_id, note.note_id, "reported another note");
}

#[tokio::test]
async fn get_and_list_are_retried_after_unavailable() {
    let store = Arc::new(FaultyStore::default());
    let app = app_over(&store).await;
    let client = app.client_as("alice").await;
    let note = client.create("read me", None).await.unwrap();
    store.fail_next(Op::Get, &[Fault::Unavailable, Fault::Unavailable]);
    store.fail_next(Op::List, &[Fault::Unavailable]);

    assert_eq!(client.get(&note.note_id).await.unwrap().content, "read me");
    assert_eq!(client.list(0, "").await.unwrap().notes.len(), 1);

    assert_eq!(store.calls(Op::Get), 3);
    assert_eq!(store.calls(Op::List), 2);
}

#[tokio::test]
async fn updates_and_deletes_whose_reply_was_lost_are_retried_and_applied_once() {
    let store = Arc::new(FaultyStore::default());
    let app = app_over(&store).await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();
    store.fail_next(Op::Update, &[Fault::LostReply]);
    store.fail_next(Op::Delete, &[Fault::LostReply]);

    let updated = client.update(&note.note_id, "v2", 1).await;
    let after_update = client.get(&note.note_id).await.unwrap();
    let deleted = client.delete(&note.note_id, 2).await;

    let updated = updated.expect("the first outcome, not ABORTED");
    assert_eq!((updated.version, updated.content.as_str()), (2, "v2"));
    assert_eq!(after_update.version, 2, "applied twice");
    assert!(deleted.is_ok(), "{deleted:?}");
    assert_eq!(store.calls(Op::Update), 2, "the update was not retried");
    assert_eq!(store.calls(Op::Delete), 2, "the delete was not retried");
}

#[tokio::test]
async fn updates_and_deletes_without_a_request_id_are_never_sent_twice() {
    let store = Arc::new(FaultyStore::default());
    let app = app_over(&store).await;
    let client = app.client_as("alice").await;
    let note = client.create("v1", None).await.unwrap();
    store.fail_next(Op::Update, &[Fault::LostReply]);
    store.fail_next(Op::Delete, &[Fault::Unavailable]);

    let updated = client
        .update_with_request_id(&note.note_id, "v2", 0, None)
        .await;
    let deleted = client.delete_with_request_id(&note.note_id, 0, None).await;

    assert!(matches!(updated, Err(Error::Unavailable(_))), "{updated:?}");
    assert!(matches!(deleted, Err(Error::Unavailable(_))), "{deleted:?}");
    assert_eq!(store.calls(Op::Update), 1, "the update was sent again");
    assert_eq!(store.calls(Op::Delete), 1, "the delete was sent again");
    // The lost-reply update was applied exactly once.
    assert_eq!(client.get(&note.note_id).await.unwrap().version, 2);
}

#[tokio::test]
async fn only_unavailable_is_retried() {
    let store = Arc::new(FaultyStore::default());
    let app = app_over(&store).await;
    let client = app.client_as("alice").await;
    let note = client.create("x", None).await.unwrap();
    store.fail_next(Op::Get, &[Fault::Internal]);
    store.fail_next(Op::List, &[Fault::Internal]);

    let got = client.get(&note.note_id).await;
    let listed = client.list(0, "").await;

    assert!(
        matches!(
            got,
            Err(Error::Other {
                code: tonic::Code::Internal,
                ..
            })
        ),
        "{got:?}"
    );
    assert!(listed.is_err(), "{listed:?}");
    assert_eq!(store.calls(Op::Get), 1, "INTERNAL was retried");
    assert_eq!(store.calls(Op::List), 1, "INTERNAL was retried");
    // A missing note is an answer, not a failure: not retried either.
    let missing = client.get(&Uuid::now_v7().to_string()).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
    assert_eq!(store.calls(Op::Get), 2);
}
