//! The embedded in-memory store: dev mode and fast tests.
//!
//! Everything is behind one lock held only for map operations (no `.await`
//! inside), which makes every method trivially atomic. Reads share it (a
//! read-write lock), so concurrent gets and lists do not queue for each other.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::RwLock,
};

use async_trait::async_trait;
use uuid::Uuid;

use super::{Change, Edit, NewNote, Note, NotePage, NoteStore, Revocation, StoreError};

/// Request ids of updates and deletes remembered per owner, newest kept:
/// as many as the DynamoDB store keeps on a busy note, and more.
const CHANGE_REQUESTS_KEPT: usize = 1024;

#[derive(Default)]
struct Owner {
    notes: BTreeMap<Uuid, Note>,
    /// request_id -> the note as first created; its content tells a retry from a reuse.
    requests: HashMap<String, Note>,
    /// (note, request_id) of an update or delete -> its digest and outcome.
    changes: HashMap<(Uuid, String), (String, Option<Note>)>,
    /// The keys of `changes`, oldest first, to forget the oldest.
    change_order: VecDeque<(Uuid, String)>,
}

impl Owner {
    /// The first outcome of `request_id` on `note_id` (`Some(None)` for a
    /// delete), if it was used with the request of `digest`; refused if it
    /// was used for another request.
    fn repeated(
        &self,
        note_id: Uuid,
        request_id: &Option<String>,
        digest: &str,
    ) -> Result<Option<Option<Note>>, StoreError> {
        let Some(request_id) = request_id else {
            return Ok(None);
        };
        match self.changes.get(&(note_id, request_id.clone())) {
            Some((first, outcome)) if first == digest => Ok(Some(outcome.clone())),
            Some(_) => Err(StoreError::RequestIdReused(request_id.clone())),
            None => Ok(None),
        }
    }

    /// Remembers the outcome of `request_id` on `note_id`.
    fn remember(
        &mut self,
        note_id: Uuid,
        request_id: Option<String>,
        digest: String,
        outcome: Option<Note>,
    ) {
        let Some(request_id) = request_id else { return };
        let key = (note_id, request_id);
        self.change_order.push_back(key.clone());
        self.changes.insert(key, (digest, outcome));
        while self.change_order.len() > CHANGE_REQUESTS_KEPT {
            if let Some(oldest) = self.change_order.pop_front() {
                self.changes.remove(&oldest);
            }
        }
    }

    /// Applies `edit` to `note_id` under `change`, at most once per request id.
    fn apply(
        &mut self,
        owner: &str,
        note_id: Uuid,
        edit: Edit,
        change: Change,
    ) -> Result<Option<Note>, StoreError> {
        let digest = change.digest(&edit);
        if let Some(outcome) = self.repeated(note_id, &change.request_id, &digest)? {
            return Ok(outcome);
        }
        let note = self
            .notes
            .get_mut(&note_id)
            .ok_or(StoreError::NotFound(note_id))?;
        debug_assert_eq!(note.owner, owner);
        check_version(note, change.expected_version)?;
        let outcome = match edit {
            Edit::Update(content) => {
                note.content = content;
                note.version += 1;
                note.update_time = change.now;
                Some(note.clone())
            }
            Edit::Delete => {
                self.notes.remove(&note_id);
                None
            }
        };
        self.remember(note_id, change.request_id, digest, outcome.clone());
        Ok(outcome)
    }
}

/// Notes in process memory; lost on restart.
#[derive(Default)]
pub struct MemoryStore {
    /// By owner; foldhash, seeded per map: owners are token subjects, which
    /// only the issuers make.
    owners: RwLock<HashMap<String, Owner, foldhash::fast::RandomState>>,
    /// The token revocation list, in recording order.
    revocations: RwLock<Vec<Revocation>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with_owner<T>(&self, owner: &str, f: impl FnOnce(&mut Owner) -> T) -> T {
        // A poisoned lock only means another call panicked mid-way; the maps
        // are still consistent because every mutation is a single insert/remove.
        let mut owners = self.owners.write().unwrap_or_else(|e| e.into_inner());
        f(owners.entry(owner.to_owned()).or_default())
    }

    /// Reads `owner`'s notes, if it has any, adding no entry for it.
    fn read_owner<T>(&self, owner: &str, f: impl FnOnce(Option<&Owner>) -> T) -> T {
        let owners = self.owners.read().unwrap_or_else(|e| e.into_inner());
        f(owners.get(owner))
    }
}

fn check_version(note: &Note, expected: Option<i64>) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != note.version => Err(StoreError::VersionMismatch {
            note_id: note.note_id,
            expected,
            actual: note.version,
        }),
        _ => Ok(()),
    }
}

#[async_trait]
impl NoteStore for MemoryStore {
    async fn revoke_tokens(&self, revocation: &Revocation) -> Result<(), StoreError> {
        let mut list = self.revocations.write().unwrap_or_else(|e| e.into_inner());
        let kept_from = revocation
            .recorded_ns
            .saturating_sub(super::REVOCATION_KEPT.as_nanos() as u64);
        list.retain(|r| r.recorded_ns >= kept_from);
        list.push(revocation.clone());
        list.sort_by_key(|r| r.recorded_ns);
        Ok(())
    }

    async fn revocations_since(&self, since_ns: u64) -> Result<Vec<Revocation>, StoreError> {
        let list = self.revocations.read().unwrap_or_else(|e| e.into_inner());
        Ok(list
            .iter()
            .filter(|r| r.recorded_ns >= since_ns)
            .cloned()
            .collect())
    }

    async fn create(&self, owner: &str, new: NewNote) -> Result<Note, StoreError> {
        self.with_owner(owner, |o| {
            if let Some(request_id) = &new.request_id
                && let Some(first) = o.requests.get(request_id)
            {
                return if first.content == new.content {
                    Ok(first.clone())
                } else {
                    Err(StoreError::RequestIdReused(request_id.clone()))
                };
            }
            let note = Note {
                note_id: new.note_id,
                owner: owner.to_owned(),
                content: new.content,
                create_time: new.now,
                update_time: new.now,
                version: 1,
            };
            if let Some(request_id) = new.request_id {
                o.requests.insert(request_id, note.clone());
            }
            o.notes.insert(note.note_id, note.clone());
            Ok(note)
        })
    }

    async fn get(&self, owner: &str, note_id: Uuid) -> Result<Note, StoreError> {
        self.read_owner(owner, |o| {
            o.and_then(|o| o.notes.get(&note_id))
                .cloned()
                .ok_or(StoreError::NotFound(note_id))
        })
    }

    async fn list(
        &self,
        owner: &str,
        limit: usize,
        after: Option<Uuid>,
    ) -> Result<NotePage, StoreError> {
        self.read_owner(owner, |o| {
            let Some(o) = o else {
                return Ok(NotePage {
                    notes: Vec::new(),
                    next_after: None,
                });
            };
            let older = match after {
                Some(after) => o.notes.range(..after),
                None => o.notes.range(..),
            };
            let mut notes: Vec<Note> = older
                .rev()
                .take(limit + 1)
                .map(|(_, n)| n.clone())
                .collect();
            let more = notes.len() > limit;
            notes.truncate(limit);
            let next_after = if more {
                notes.last().map(|n| n.note_id)
            } else {
                None
            };
            Ok(NotePage { notes, next_after })
        })
    }

    async fn update(
        &self,
        owner: &str,
        note_id: Uuid,
        content: String,
        change: Change,
    ) -> Result<Note, StoreError> {
        self.with_owner(owner, |o| {
            o.apply(owner, note_id, Edit::Update(content), change)
        })?
        .ok_or_else(|| StoreError::Internal("an update's request_id names a delete".into(), None))
    }

    async fn delete(&self, owner: &str, note_id: Uuid, change: Change) -> Result<(), StoreError> {
        self.with_owner(owner, |o| o.apply(owner, note_id, Edit::Delete, change))?;
        Ok(())
    }
}
